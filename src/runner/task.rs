//! One run as a task: wait for a slot, prepare, start the sandbox (through the helper or in this
//! process), feed stdin and inputs, capture output, honour kill and timeout, emit events.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::store::progress::{Observer, PullProgress};
use helper::Message;

pub(super) async fn emit(tx: &Option<mpsc::Sender<Event>>, ev: Event) {
    if let Some(tx) = tx {
        // A consumer that dropped its stream just stops getting events.
        let _ = tx.send(ev).await;
    }
}

/// Resolves when the handle asks for a kill or is dropped.
pub(super) async fn killed(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

pub(super) async fn run_task(
    inner: Arc<Inner>,
    mut spec: RunSpec,
    tx: Option<mpsc::Sender<Event>>,
    mut kill: watch::Receiver<bool>,
    ticket: Ticket,
) -> Result<RunResult, Error> {
    let t0 = Instant::now();
    let started_at = SystemTime::now();
    let run_id = spec
        .run_id
        .clone()
        .unwrap_or_else(crate::sandbox::plan::new_run_id);
    let mut rec = Recorder::new(&inner, &spec, &run_id, started_at);
    // Every event of this run, in this process, carries its id.
    let span = tracing::debug_span!("run", run_id = %run_id);
    let r = tracing::Instrument::instrument(
        run_inner(&inner, &mut spec, &tx, &mut kill, ticket, &mut rec, t0),
        span,
    )
    .await;
    match &r {
        Ok(res) => tracing::debug!(run_id = %run_id, exit_code = res.exit_code, "run finished"),
        Err(e) => tracing::debug!(run_id = %run_id, error = %e, "run failed"),
    }
    if let Err(e) = &r {
        emit(&tx, Event::Failed(e.clone())).await;
    }
    let inner2 = inner.clone();
    let r2 = r.clone();
    // The audit sink may block (a file, a socket): not on an async worker thread.
    let _ = tokio::task::spawn_blocking(move || rec.audit(&inner2, &r2)).await;
    r
}

pub(super) async fn run_inner(
    inner: &Arc<Inner>,
    spec: &mut RunSpec,
    tx: &Option<mpsc::Sender<Event>>,
    kill: &mut watch::Receiver<bool>,
    ticket: Ticket,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<RunResult, Error> {
    let run_id = rec.run_id.clone();
    if spec.tty {
        return Err(Error::bad_spec(
            "a terminal (tty) needs Runtime::run_here: a run through the helper captures its output",
        ));
    }
    // A bad spec fails at once, without waiting for a slot.
    let mut prep = prepare_base(inner, spec, &run_id)?;
    rec.fill(&prep.sandbox);
    let helper = inner
        .helper
        .clone()
        .map_err(|message| Error::Helper { message })?;

    let slot = match ticket {
        Ticket::Ready(slot) => slot,
        Ticket::Waiting { position, slot } => {
            tracing::debug!(position, "queued: all slots busy");
            emit(tx, Event::Queued { position }).await;
            tokio::select! {
                s = slot => s.map_err(|_| Error::Helper { message: "the run queue went away".into() })?,
                _ = killed(kill) => return Err(Error::Cancelled),
            }
        }
    };
    let admitted = slot.admitted;
    let queue = t0.elapsed();

    let t_pull = Instant::now();
    if let Source::Image(reference) = &spec.source {
        let reference = reference.clone();
        let policy = spec.pull.unwrap_or(inner.pull_policy);
        let img = match lookup(inner, &reference, policy, &pull_options(inner, spec, None))? {
            Some(img) => {
                tracing::debug!(%reference, digest = %img.digest, "image found in the cache");
                img
            }
            None => {
                tracing::debug!(%reference, ?policy, "pulling the image");
                let (ptx, mut prx) = mpsc::unbounded_channel::<PullProgress>();
                let observer = Observer(Arc::new(move |p| {
                    let _ = ptx.send(p);
                }));
                let opts = pull_options(inner, spec, Some(observer));
                let store = inner.store()?;
                let r2 = reference.clone();
                let pull = async move { store.pull(&r2, &opts).await };
                let mut pull = std::pin::pin!(pull);
                let img = loop {
                    tokio::select! {
                        r = &mut pull => break r.map_err(|e| Error::from_store(&reference, &e))?,
                        Some(p) = prx.recv() => emit(tx, Event::Pulling { reference: reference.clone(), progress: p }).await,
                        _ = killed(kill) => return Err(Error::Cancelled),
                    }
                };
                // The final progress (everything done) may still be in the channel.
                while let Ok(p) = prx.try_recv() {
                    emit(
                        tx,
                        Event::Pulling {
                            reference: reference.clone(),
                            progress: p,
                        },
                    )
                    .await;
                }
                img
            }
        };
        prep.use_image(&inner.store()?, img, spec)?;
        rec.fill(&prep.sandbox);
        rec.image = prep.image.clone();
    }
    let pull = t_pull.elapsed();

    let t_setup = Instant::now();
    if spec.uses_scratch() {
        prep.create_scratch(&inner.root, &run_id)?;
        tracing::debug!("scratch directory created for files in and out");
    }
    let inputs = std::mem::take(&mut spec.inputs);
    if let Some(s) = &prep.scratch {
        tokio::select! {
            r = s.write_inputs(inputs) => { r?; }
            _ = killed(kill) => return Err(Error::Cancelled),
        }
    }

    let stdin_source = std::mem::take(&mut spec.stdin);
    let (stdin_stdio, feed): (
        Option<std::process::Stdio>,
        Option<Box<dyn AsyncRead + Send + Unpin>>,
    ) = match stdin_source {
        Stdin::Null => (None, None),
        Stdin::Inherit => (Some(std::process::Stdio::inherit()), None),
        Stdin::Data(Data::File(p)) => {
            let f = std::fs::File::open(&p).map_err(|e| Error::files(&p, "open stdin", e))?;
            (Some(f.into()), None)
        }
        Stdin::Data(Data::Bytes(b)) => (
            Some(std::process::Stdio::piped()),
            Some(Box::new(std::io::Cursor::new(b))),
        ),
        Stdin::Data(Data::Reader(r)) => (Some(std::process::Stdio::piped()), Some(r)),
    };
    tracing::debug!(helper = %helper.path().display(), "starting the sandbox through the helper");
    let mut hr = match (&inner.pool, stdin_stdio) {
        (Some(pool), None) => pool.start(&prep.sandbox)?,
        (_, stdin_stdio) => helper.start(&prep.sandbox, stdin_stdio, true)?,
    };
    let child_stdin = hr.stdin.take();
    let stdout = hr.stdout.take().expect("piped");
    let stderr = hr.stderr.take().expect("piped");
    let cap = spec.capture_limit.unwrap_or(inner.capture_limit);

    let (gate_tx, gate_rx) = watch::channel(false);
    let feed_task = async move {
        if let (Some(mut pipe), Some(mut src)) = (child_stdin, feed) {
            // A tool that exits without reading all of its input closes the pipe: not an error.
            let _ = tokio::io::copy(&mut src, &mut pipe).await;
            let _ = pipe.shutdown().await;
        }
    };
    let pumps = async {
        tokio::join!(
            pump(stdout, cap, tx, false, gate_rx.clone()),
            pump(stderr, cap, tx, true, gate_rx.clone())
        )
    };
    let control = async {
        let mut last: Option<Message> = None;
        let mut err: Option<String> = None;
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                m = hr.message() => match m {
                    Ok(Some(Message::Started { run_id, setup_time })) => {
                        emit(tx, Event::Started { run_id, setup_time }).await;
                        let _ = gate_tx.send(true);
                    }
                    Ok(Some(m)) => last = Some(m),
                    Ok(None) => break,
                    Err(e) => { err = Some(e.to_string()); break; }
                },
                _ = killed(kill), if !cancel_sent => {
                    cancel_sent = true;
                    hr.cancel().await;
                }
            }
        }
        let _ = gate_tx.send(true);
        let status = hr.wait().await;
        (last, err, status)
    };
    // Stdin is fed until the run ends, not longer: a reader that never ends (or stalls) must
    // not keep a finished run waiting.
    let mut feed_task = std::pin::pin!(feed_task);
    let mut main = std::pin::pin!(async { tokio::join!(pumps, control) });
    let mut fed = false;
    let ((out, errs), (last, err, status)) = loop {
        tokio::select! {
            r = &mut main => break r,
            _ = &mut feed_task, if !fed => fed = true,
        }
    };
    let t_end = Instant::now();

    let outcome = match last {
        Some(Message::Done { outcome }) => outcome,
        Some(Message::Failed { error }) => return Err(error),
        _ => {
            return Err(Error::Helper {
                message: format!(
                    "the nsrun helper {} ended without a result ({status}{}){}",
                    helper.path().display(),
                    err.map(|e| format!("; {e}")).unwrap_or_default(),
                    if errs.data.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", String::from_utf8_lossy(&errs.data).trim())
                    }
                ),
            })
        }
    };
    let outputs = match prep.scratch.take() {
        Some(s) => {
            let names = prep.outputs.clone();
            let dir = prep.output_dir.clone();
            let lim = spec.output_limits.unwrap_or(inner.output_limits);
            tokio::task::spawn_blocking(move || {
                let r = s.collect_outputs(&names, lim, dir.as_deref());
                drop(s); // removes the scratch
                r
            })
            .await
            .map_err(|e| Error::Helper {
                message: format!("output collection failed: {e}"),
            })??
        }
        None => Vec::new(),
    };
    let run = outcome.wall_time.saturating_sub(outcome.setup_time);
    let setup = (t_end - t_setup).saturating_sub(run);
    let result = rec.result(
        &prep,
        outcome,
        out,
        errs,
        outputs,
        Durations {
            queue,
            pull,
            setup,
            run,
            total: t0.elapsed(),
        },
        admitted,
    );
    emit(
        tx,
        Event::Exited {
            exit_code: result.exit_code,
            signal: result.signal,
            timed_out: result.timed_out,
            oom_killed: result.oom_killed,
        },
    )
    .await;
    Ok(result)
}

/// Reads one of the tool's streams to its end: keeps the first `cap` bytes, counts the rest,
/// and passes chunks on as events. Starts reading once the tool has started (or failed), so
/// that `Started` comes before any output.
pub(super) async fn pump(
    mut r: impl AsyncRead + Unpin,
    cap: usize,
    tx: &Option<mpsc::Sender<Event>>,
    is_err: bool,
    mut gate: watch::Receiver<bool>,
) -> Captured {
    let _ = gate.wait_for(|open| *open).await;
    let mut c = Captured::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        c.total += n as u64;
        let room = cap.saturating_sub(c.data.len());
        c.data.extend_from_slice(&buf[..n.min(room)]);
        if tx.is_some() {
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            emit(
                tx,
                if is_err {
                    Event::Stderr(chunk)
                } else {
                    Event::Stdout(chunk)
                },
            )
            .await;
        }
    }
    c
}
