//! The broker's command-line tools: `troupe echo-worker` (a worker built on
//! `troupe_broker::worker` that answers every request with its body) and `troupe call` (one
//! Majordomo request, reply printed on stdout).

use std::io::Write;
use std::sync::Arc;

use troupe_broker::client::{ClientError, ClientOptions, MajordomoClient};
use troupe_broker::worker::{Worker, WorkerFraming, WorkerOptions};

use crate::cli::{CallArgs, EchoFraming, EchoWorkerArgs, LogFormat};

/// Runs the echo worker until SIGTERM/SIGINT, then leaves gracefully. Returns the exit code.
pub fn echo_worker(args: EchoWorkerArgs) -> i32 {
    if let Err(err) = crate::logging::init(args.log_level.as_deref(), LogFormat::Text) {
        eprintln!("troupe: {err}");
        return 2;
    }
    let options = WorkerOptions {
        framing: match args.framing {
            EchoFraming::Seed => WorkerFraming::Seed,
            EchoFraming::Pirate => WorkerFraming::Pirate,
        },
        concurrency: args.concurrency,
        heartbeat_interval: args.heartbeat_interval,
        liveness: args.liveness,
        drain_timeout: args.drain_timeout,
        ..WorkerOptions::new(args.connect.clone())
    };
    let (worker, stop) = match Worker::new(options) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("troupe: echo-worker: {err}");
            return 2;
        }
    };
    let delay = args.delay;
    let handler = Arc::new(move |body: Vec<Vec<u8>>| {
        tracing::debug!(frames = body.len(), "request received");
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        body
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("troupe: echo-worker: {err}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let mut signals = match crate::signals::Signals::new() {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("troupe: echo-worker: cannot listen for signals: {err}");
                return 1;
            }
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let result = worker.run(handler);
            let _ = done_tx.send(());
            result
        });
        tracing::info!(
            connect = %args.connect,
            concurrency = args.concurrency,
            framing = ?args.framing,
            pid = std::process::id(),
            "echo worker started"
        );
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!(signal, "signal received; leaving the broker");
                stop.stop();
            }
            _ = done_rx => {}
        }
        match thread.join() {
            Ok(Ok(summary)) => {
                tracing::info!(
                    handled = summary.handled,
                    reconnects = summary.reconnects,
                    "echo worker stopped"
                );
                0
            }
            Ok(Err(err)) => {
                eprintln!("troupe: echo-worker: {err}");
                1
            }
            Err(_) => 1,
        }
    })
}

/// Sends one request and prints the reply's frames, one per line. Returns the exit code: 0
/// for a reply, 1 for an error reply or no reply.
pub fn call(args: CallArgs) -> i32 {
    let management = args.service.starts_with("mmi.");
    if let Err(err) = troupe_broker::config::check_service_name(&args.service) {
        if !management {
            eprintln!("troupe: call: {err}");
            return 2;
        }
    }
    let mut client = MajordomoClient::new(
        args.endpoint.clone(),
        ClientOptions {
            timeout: args.timeout,
            retries: args.retries,
        },
    );
    match client.request(&args.service, vec![args.payload.into_bytes()]) {
        Ok(frames) => {
            let mut stdout = std::io::stdout().lock();
            for frame in frames {
                let _ = stdout.write_all(&frame);
                let _ = stdout.write_all(b"\n");
            }
            0
        }
        Err(ClientError::NoReply { timeout, .. }) => {
            eprintln!(
                "troupe: call {}: no reply from {} within {} (is the broker running with its Majordomo socket there?)",
                args.service,
                args.endpoint,
                troupe_core::settings::Duration(timeout)
            );
            1
        }
        Err(err) => {
            eprintln!("troupe: call {}: {err}", args.service);
            1
        }
    }
}
