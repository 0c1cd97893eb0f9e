//! Per-layer download progress on a terminal; nothing at all when stderr is not one.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
