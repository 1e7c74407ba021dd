//! Batches decoded and augmented on worker threads with bounded prefetch.
//!
//! Worker `w` builds batches `w, w + workers, ...` of the epoch into its own
//! bounded channel and the consumer reads the channels round-robin, so batch
//! order and content never depend on thread timing. Each sample's randomness
//! comes from `(seed, epoch, sample index)` alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::{prepare, AugmentConfig};
use crate::data::Source;
use crate::error::{Result, TrainError};

/// One mini-batch, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[N, C, H, W]`, normalised.
    pub images: Vec<f32>,
    /// `[N, H, W]` class indices.
    pub masks: Vec<u8>,
    /// Source indices of the samples.
    pub indices: Vec<usize>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// What every batch of a run shares.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// 0 = load on the calling thread.
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `None`: resize and normalise only (validation).
    pub augment: Option<AugmentConfig>,
}

/// SplitMix64 finaliser: decorrelates nearby `(seed, epoch, index)` triples.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of one sample in one epoch.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(seed ^ mix(epoch)) ^ index as u64))
}

/// The training order of epoch `epoch`.
pub fn epoch_order(indices: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        mix(seed ^ 0x5EED) ^ mix(epoch),
    ));
    order
}

fn build_batch(
    source: &dyn Source,
    ids: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
) -> Result<Batch> {
    let mut images = Vec::new();
    let mut masks = Vec::new();
    let mut channels = 0;
    for &i in ids {
        let raw = source.get(i)?;
        channels = raw.channels;
        let p = match &cfg.augment {
            Some(aug) => {
                let mut rng = sample_rng(cfg.seed, epoch, i);
                prepare(
                    &raw,
                    cfg.width,
                    cfg.height,
                    Some((aug, &mut rng)),
                    &cfg.mean,
                    &cfg.std,
                )
            }
            None => prepare(&raw, cfg.width, cfg.height, None, &cfg.mean, &cfg.std),
        };
        images.extend_from_slice(&p.image);
        masks.extend_from_slice(&p.mask);
    }
    Ok(Batch {
        images,
        masks,
        indices: ids.to_vec(),
        channels,
        height: cfg.height,
        width: cfg.width,
    })
}

/// The CPU time this thread has used: what loading costs the compute
/// threads it shares the cores with, which wall time on a busy machine
/// would overstate.
fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec for clock_gettime to write.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// [`build_batch`], adding the CPU time it took to `cpu_nanos`.
fn build_batch_timed(
    source: &dyn Source,
    ids: &[usize],
    cfg: &LoaderConfig,
    epoch: u64,
    cpu_nanos: &AtomicU64,
) -> Result<Batch> {
    let start = thread_cpu_time();
    let batch = build_batch(source, ids, cfg, epoch);
    let spent = thread_cpu_time().saturating_sub(start);
    cpu_nanos.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    batch
}

/// What an epoch's loading has cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadCost {
    /// Batches handed out.
    pub batches: usize,
    /// CPU time spent decoding and augmenting them, on any thread.
    pub cpu: Duration,
    /// Time the consumer waited for them.
    pub waited: Duration,
}

/// Iterates the batches of one epoch, starting at batch `skip`.
pub struct EpochLoader {
    source: Arc<dyn Source>,
    cfg: Arc<LoaderConfig>,
    epoch: u64,
    chunks: Vec<Vec<usize>>,
    next: usize,
    skip: usize,
    receivers: Vec<Receiver<Result<Batch>>>,
    cpu_nanos: Arc<AtomicU64>,
    waited: Duration,
}

impl EpochLoader {
    pub fn new(
        source: Arc<dyn Source>,
        cfg: Arc<LoaderConfig>,
        order: &[usize],
        epoch: u64,
        skip: usize,
    ) -> Self {
        let chunks: Vec<Vec<usize>> = order
            .chunks(cfg.batch_size.max(1))
            .map(|c| c.to_vec())
            .collect();
        let mut receivers = Vec::new();
        let cpu_nanos = Arc::new(AtomicU64::new(0));
        for w in 0..cfg.workers {
            let (tx, rx) = sync_channel(cfg.prefetch.max(1));
            let mine: Vec<Vec<usize>> = chunks
                .iter()
                .skip(skip + w)
                .step_by(cfg.workers)
                .cloned()
                .collect();
            let (source, cfg, cpu) = (
                Arc::clone(&source),
                Arc::clone(&cfg),
                Arc::clone(&cpu_nanos),
            );
            thread::spawn(move || {
                for ids in mine {
                    let batch = build_batch_timed(source.as_ref(), &ids, &cfg, epoch, &cpu);
                    // A closed channel means the consumer is gone: stop quietly.
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
            receivers.push(rx);
        }
        EpochLoader {
            source,
            cfg,
            epoch,
            chunks,
            next: skip,
            skip,
            receivers,
            cpu_nanos,
            waited: Duration::ZERO,
        }
    }

    /// What the batches handed out so far have cost.
    pub fn cost(&self) -> LoadCost {
        LoadCost {
            batches: self.next - self.skip,
            cpu: Duration::from_nanos(self.cpu_nanos.load(Ordering::Relaxed)),
            waited: self.waited,
        }
    }

    /// Number of batches in the whole epoch (including skipped ones).
    pub fn num_batches(&self) -> usize {
        self.chunks.len()
    }
}

impl Iterator for EpochLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let ids = self.chunks.get(self.next)?;
        let asked = Instant::now();
        let item = if self.receivers.is_empty() {
            let (source, cfg) = (self.source.as_ref(), &self.cfg);
            build_batch_timed(source, ids, cfg, self.epoch, &self.cpu_nanos)
        } else {
            // Worker w owns batches skip + w, skip + w + workers, ...
            let w = (self.next - self.skip) % self.receivers.len();
            self.receivers[w]
                .recv()
                .unwrap_or_else(|_| Err(TrainError::Worker("a worker thread exited early".into())))
        };
        self.waited += asked.elapsed();
        self.next += 1;
        Some(item)
    }
}
