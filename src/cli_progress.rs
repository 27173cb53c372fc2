//! Progress of the `sync` subcommand on stderr: one indicatif bar per image (bytes,
//! blobs, rate) when stderr is a terminal, plain lines otherwise (CI logs, pipes), none
//! with `--quiet`. It is an engine [`SyncObserver`]: the engine only emits events and
//! knows nothing of terminals.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{BlobKind, ImageStatus, Step, SyncEvent, SyncObserver};

/// How often at most a plain-lines image reports its bytes while a blob moves.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// indicatif bars, redrawn in place (stderr is a terminal).
    Bars {
        /// Colours allowed (`NO_COLOR` unset).
        color: bool,
    },
    /// One line per event worth telling, for logs and pipes.
    Lines,
    /// Nothing (`--quiet`).
    Quiet,
}

impl ProgressMode {
    /// Bars on a terminal, lines elsewhere, nothing when `quiet`; `NO_COLOR` (any value,
    /// per no-color.org) turns colours off.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Self::Quiet
        } else if std::io::stderr().is_terminal() {
            Self::Bars {
                color: std::env::var_os("NO_COLOR").is_none(),
            }
        } else {
            Self::Lines
        }
    }
}

/// One planned image as the renderer tracks it.
struct ImageLine {
    name: String,
    bar: Option<ProgressBar>,
    step: Step,
    blobs_total: u64,
    blobs_done: u64,
    bytes_total: u64,
    bytes_done: u64,
    started: Instant,
    last_line: Instant,
}

/// Renders a sync's events on stderr in the chosen [`ProgressMode`].
pub struct CliProgress {
    mode: ProgressMode,
    multi: MultiProgress,
    images: Mutex<Vec<ImageLine>>,
}

impl CliProgress {
    /// A renderer for `mode`.
    pub fn new(mode: ProgressMode) -> Self {
        let target = match mode {
            ProgressMode::Bars { .. } => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        };
        Self {
            mode,
            multi: MultiProgress::with_draw_target(target),
            images: Mutex::new(Vec::new()),
        }
    }

    fn style(&self) -> ProgressStyle {
        let color = matches!(self.mode, ProgressMode::Bars { color: true });
        let template = if color {
            "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        } else {
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-")
    }

    /// Writes one plain line (lines mode only); stderr errors are ignored, as for logs.
    fn line(&self, text: &str) {
        if self.mode == ProgressMode::Lines {
            let _ = writeln!(std::io::stderr().lock(), "imagersync: {text}");
        }
    }

    fn message(image: &ImageLine) -> String {
        format!(
            "blobs {}/{} {}",
            image.blobs_done,
            image.blobs_total,
            step_name(image.step)
        )
    }

    fn rate(image: &ImageLine) -> String {
        let secs = image.started.elapsed().as_secs_f64().max(0.001);
        format!("{}/s", BinaryBytes((image.bytes_done as f64 / secs) as u64))
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Waiting => "waiting",
        Step::RateLimited => "waiting for the pull rate limit",
        Step::ReadingManifest => "reading the manifest",
        Step::CheckingTarget => "checking the target",
        Step::ReadingChildren => "reading child manifests",
        Step::CopyingBlobs => "copying blobs",
        Step::PushingManifests => "pushing manifests",
        Step::Done => "done",
    }
}

impl SyncObserver for CliProgress {
    fn on_event(&self, event: &SyncEvent<'_>) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            SyncEvent::Planned { images: planned } => {
                self.line(&format!("{} image(s) to sync", planned.len()));
                for (i, (source, target)) in planned.iter().enumerate() {
                    let name = format!("[{}/{}] {source} -> {target}", i + 1, planned.len());
                    let bar = matches!(self.mode, ProgressMode::Bars { .. }).then(|| {
                        let bar = self.multi.add(ProgressBar::no_length());
                        bar.set_style(self.style());
                        bar.set_prefix(name.clone());
                        bar.set_message("waiting");
                        bar
                    });
                    let now = Instant::now();
                    images.push(ImageLine {
                        name,
                        bar,
                        step: Step::Waiting,
                        blobs_total: 0,
                        blobs_done: 0,
                        bytes_total: 0,
                        bytes_done: 0,
                        started: now,
                        last_line: now,
                    });
                }
            }
            SyncEvent::Step { image, step } => {
                let Some(image) = images.get_mut(*image) else {
                    return;
                };
                image.step = *step;
                if *step == Step::CopyingBlobs {
                    image.started = Instant::now();
                }
                if let Some(bar) = &image.bar {
                    bar.set_message(Self::message(image));
                } else if !matches!(step, Step::Done) {
                    self.line(&format!("{}: {}", image.name, step_name(*step)));
                }
            }
            SyncEvent::BlobsPlanned {
                image,
                blobs,
                bytes,
            } => {
                let Some(image) = images.get_mut(*image) else {
                    return;
                };
                image.blobs_total += blobs;
                image.bytes_total += bytes;
                match &image.bar {
                    Some(bar) => {
                        bar.set_length(image.bytes_total);
                        bar.set_message(Self::message(image));
                    }
                    None => self.line(&format!(
                        "{}: {} blobs, {}",
                        image.name,
                        image.blobs_total,
                        BinaryBytes(image.bytes_total)
                    )),
                }
            }
            SyncEvent::BytesMoved { image, delta } => {
                let Some(image) = images.get_mut(*image) else {
                    return;
                };
                image.bytes_done = image.bytes_done.saturating_add_signed(*delta);
                match &image.bar {
                    Some(bar) => bar.set_position(image.bytes_done),
                    None if image.last_line.elapsed() >= LINE_EVERY => {
                        image.last_line = Instant::now();
                        self.line(&format!(
                            "{}: {} of {}, blobs {}/{}, {}",
                            image.name,
                            BinaryBytes(image.bytes_done),
                            BinaryBytes(image.bytes_total),
                            image.blobs_done,
                            image.blobs_total,
                            Self::rate(image)
                        ));
                    }
                    None => {}
                }
            }
            SyncEvent::BlobDone {
                image, kind, bytes, ..
            } => {
                let Some(image) = images.get_mut(*image) else {
                    return;
                };
                image.blobs_done += 1;
                // Skipped and mounted blobs never stream: count them as done at once,
                // so the bar ends full.
                if *kind != BlobKind::Copied {
                    image.bytes_done += bytes;
                }
                match &image.bar {
                    Some(bar) => {
                        bar.set_position(image.bytes_done);
                        bar.set_message(Self::message(image));
                    }
                    None => self.line(&format!(
                        "{}: blob {}/{} {} ({})",
                        image.name,
                        image.blobs_done,
                        image.blobs_total,
                        kind.as_str(),
                        BinaryBytes(*bytes)
                    )),
                }
            }
            SyncEvent::ImageFinished { image, result } => {
                let Some(image) = images.get_mut(*image) else {
                    return;
                };
                let outcome = match result.status {
                    ImageStatus::Failed => format!(
                        "failed: {}",
                        result.error.as_deref().unwrap_or("see the log")
                    ),
                    ImageStatus::Synced => "synced".into(),
                    ImageStatus::AlreadySynced => "already synced".into(),
                };
                match &image.bar {
                    Some(bar) => {
                        bar.set_position(image.bytes_done);
                        bar.finish_with_message(format!(
                            "blobs {}/{} {outcome}",
                            image.blobs_done, image.blobs_total
                        ));
                    }
                    None => self.line(&format!(
                        "{}: {outcome}, {} in {} blobs, {}",
                        image.name,
                        BinaryBytes(image.bytes_done),
                        image.blobs_done,
                        Self::rate(image)
                    )),
                }
            }
            SyncEvent::Retry { registry, cause } => {
                if images.iter().all(|i| i.bar.is_none()) {
                    self.line(&format!("retrying at {registry} ({cause})"));
                }
            }
            SyncEvent::RateLimitWait {
                image,
                registry,
                wait,
                reason,
                ..
            } => {
                let text = format!(
                    "waiting {} s for {registry}'s rate limit ({reason})",
                    wait.as_secs()
                );
                match image
                    .and_then(|i| images.get(i))
                    .and_then(|i| i.bar.as_ref())
                {
                    Some(bar) => bar.set_message(text),
                    None => self.line(&text),
                }
            }
            SyncEvent::RateLimitOver { .. } | SyncEvent::ReferrerCopied { .. } => {}
        }
    }
}
