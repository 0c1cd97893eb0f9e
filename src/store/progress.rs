//! Per-layer download progress on a terminal; nothing at all when stderr is not one.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A pull's progress, as an observer ([`Observer`]) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullProgress {
    pub layers_total: usize,
    /// Layers downloaded and unpacked.
    pub layers_done: usize,
    /// Compressed bytes of all layers, and how many have been downloaded.
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// Called every 200 ms during a pull's layer phase, and once at its end.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(PullProgress) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

fn snapshot(layers: &[Layer]) -> PullProgress {
    PullProgress {
        layers_total: layers.len(),
        layers_done: layers
            .iter()
            .filter(|l| l.state.load(Ordering::Relaxed) == EXTRACTED)
            .count(),
        bytes_total: layers.iter().map(|l| l.total).sum(),
        bytes_done: layers.iter().map(|l| l.done.load(Ordering::Relaxed)).sum(),
    }
}

/// Feeds an [`Observer`] from a tokio task until dropped (then once more, with the final state).
pub struct Watch {
    task: Option<tokio::task::JoinHandle<()>>,
    last: Option<(Arc<Vec<Layer>>, Observer)>,
}

impl Watch {
    pub fn start(layers: Arc<Vec<Layer>>, observer: Option<Observer>) -> Watch {
        let Some(obs) = observer else {
            return Watch {
                task: None,
                last: None,
            };
        };
        let (l, o) = (layers.clone(), obs.clone());
        let task = tokio::spawn(async move {
            loop {
                (o.0)(snapshot(&l));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Watch {
            task: Some(task),
            last: Some((layers, obs)),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some((l, o)) = self.last.take() {
            (o.0)(snapshot(&l));
        }
    }
}

/// One line per layer, redrawn in place.
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Byte counters the downloads update.
pub struct Layer {
    pub name: String,
    pub total: u64,
    pub done: AtomicU64,
    pub state: AtomicU64,
}

pub const WAITING: u64 = 0;
pub const DOWNLOADING: u64 = 1;
pub const DOWNLOADED: u64 = 2;
pub const EXTRACTED: u64 = 3;

impl Display {
    /// Starts drawing if `enabled` and stderr is a terminal.
    pub fn start(layers: Arc<Vec<Layer>>, enabled: bool) -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() || layers.is_empty() {
            return Display { stop, thread: None };
        }
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut drawn = false;
            loop {
                let last = s.load(Ordering::Relaxed);
                let mut out = String::new();
                if drawn {
                    out.push_str(&format!("\x1b[{}A", layers.len()));
                }
                for l in layers.iter() {
                    let done = l.done.load(Ordering::Relaxed);
                    let state = match l.state.load(Ordering::Relaxed) {
                        WAITING => "waiting".to_string(),
                        DOWNLOADING => format!("downloading {}/{}", human(done), human(l.total)),
                        DOWNLOADED => "extracting".to_string(),
                        _ => "done".to_string(),
                    };
                    out.push_str(&format!("\x1b[2K{}: {state}\n", l.name));
                }
                let _ = std::io::stderr().write_all(out.as_bytes());
                drawn = true;
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        Display {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A byte count as Docker prints it (decimal units, no space): `512B`, `2.1MB`.
///
/// ```
/// use nsrun::store::progress::human;
/// assert_eq!(human(512), "512B");
/// assert_eq!(human(2_100_000), "2.1MB");
/// assert_eq!(human(3_500_000_000_000), "3.5TB");
/// ```
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}
