//! `curves.png`: training and validation loss (left) and validation Dice and
//! IoU (right) per epoch, drawn with `plotters` on a bitmap and a bundled
//! DejaVu Sans font (no system fonts). Every epoch is a marker, so a single
//! epoch is visible; legends sit under the plots, never over the lines.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::report::EpochRecord;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 440;
/// Height of the legend strip under each plot.
const LEGEND_HEIGHT: u32 = 44;
const FONT: &str = "sans-serif";

/// matplotlib's tab10 colours, as the old curves used.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// Registers the bundled font once; `false` if it could not be read.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    })
}

/// One line on a plot.
struct Series<'a> {
    label: String,
    colour: RGBColor,
    values: &'a [f64],
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// `y` range from 0 (or below) to the finite values of `series`, with a margin.
fn y_range(series: &[Series]) -> Range<f64> {
    let finite = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let lo = lo.min(0.0);
    let span = (hi - lo).max(1e-3);
    lo..hi + 0.08 * span
}

/// One panel: a chart over `epochs` and its legend strip below.
fn panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    y: Range<f64>,
    epochs: usize,
) -> std::result::Result<(), String> {
    let (chart_area, legend_area) = area.split_vertically(HEIGHT - LEGEND_HEIGHT);
    // Integer epochs with half an epoch of room each side, so one epoch is a centred point.
    let x = 0.5..epochs as f64 + 0.5;
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(62)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    let ticks = epochs.clamp(1, 10);
    chart
        .configure_mesh()
        .x_labels(ticks + 2)
        .y_labels(6)
        .x_label_formatter(&|v| {
            // Only whole epochs are labelled.
            if (v - v.round()).abs() < 1e-6 && *v >= 1.0 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.2}"))
        .x_desc("epoch")
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|e| e.to_string())?;
    for s in series {
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| ((i + 1) as f64, v))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                s.colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, s.colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    // Legend: a marker on a short line and the label, side by side under the plot.
    let mut left = 74;
    let mid = (LEGEND_HEIGHT / 2) as i32;
    for s in series {
        legend_area
            .draw(&PathElement::new(
                vec![(left, mid), (left + 28, mid)],
                s.colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        legend_area
            .draw(&Circle::new((left + 14, mid), 4, s.colour.filled()))
            .map_err(|e| e.to_string())?;
        let style =
            TextStyle::from((FONT, 16).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            ));
        legend_area
            .draw(&Text::new(s.label.clone(), (left + 36, mid), style))
            .map_err(|e| e.to_string())?;
        left += 52 + 9 * s.label.chars().count() as i32;
    }
    Ok(())
}

/// Renders the curves to RGB pixels (`WIDTH x HEIGHT`).
fn render(history: &[EpochRecord]) -> std::result::Result<Vec<u8>, String> {
    if !font_ready() {
        return Err("the bundled font could not be read".into());
    }
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let epochs = history.len().max(1);
        let train: Vec<f64> = history.iter().map(|r| r.train_loss).collect();
        let val: Vec<f64> = history.iter().map(|r| r.val_loss).collect();
        let dice: Vec<f64> = history.iter().map(|r| r.val.dice).collect();
        let iou: Vec<f64> = history.iter().map(|r| r.val.iou).collect();
        let last = |v: &[f64]| v.last().map_or(String::new(), |x| format!(" ({x:.3})"));
        let losses = [
            Series {
                label: format!("train{}", last(&train)),
                colour: BLUE,
                values: &train,
            },
            Series {
                label: format!("validation{}", last(&val)),
                colour: ORANGE,
                values: &val,
            },
        ];
        let y = y_range(&losses);
        panel(&left, "loss", "loss", &losses, y, epochs)?;
        let best = history
            .iter()
            .max_by(|a, b| a.val.dice.total_cmp(&b.val.dice))
            .map_or(String::new(), |r| {
                format!(" (best {:.3} at epoch {})", r.val.dice, r.epoch)
            });
        let scores = [
            Series {
                label: format!("Dice{best}"),
                colour: GREEN,
                values: &dice,
            },
            Series {
                label: format!("IoU{}", last(&iou)),
                colour: PURPLE,
                values: &iou,
            },
        ];
        panel(&right, "validation", "score", &scores, 0.0..1.0, epochs)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(pixels)
}

/// Writes `curves.png` for the epochs so far (atomically).
pub fn plot_curves(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let pixels = render(history).map_err(|e| plot_error(path, e))?;
    let png = crate::report::encode_png(&pixels, WIDTH as usize, HEIGHT as usize, 3, path)?;
    crate::files::atomic_write(path, &png)
}
