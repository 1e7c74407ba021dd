//! Pictures of a result: the mask blended over the frame.

use image::{DynamicImage, Rgb, RgbImage};

use super::Segmentation;

/// Class colours: class 1 red, 2 green, 3 blue, ...
const PALETTE: [[u8; 3]; 6] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [255, 0, 255],
    [0, 255, 255],
];

/// The image with each class tinted, half opaque.
pub fn overlay(image: &DynamicImage, seg: &Segmentation) -> RgbImage {
    let mut rgb = image.to_rgb8();
    for (i, px) in rgb.pixels_mut().enumerate() {
        let m = seg.mask.get(i).copied().unwrap_or(0) as usize;
        if m > 0 {
            let c = PALETTE[(m - 1) % PALETTE.len()];
            *px = Rgb(std::array::from_fn(|k| {
                ((px[k] as u16 + c[k] as u16) / 2) as u8
            }));
        }
    }
    rgb
}
