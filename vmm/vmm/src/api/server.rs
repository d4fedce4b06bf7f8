//! The hyper server of the control API, on its own thread with a single-threaded runtime.

use std::convert::Infallible;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{route, VmController};
use crate::seccomp::{self, Filters, ThreadKind};

/// Serves the API on `listener` (bound by [`crate::preopen::bind_api`], non-blocking) on a
/// background thread, which runs under the api seccomp filter of `filters`.
pub fn serve(
    listener: UnixListener,
    vm: Arc<dyn VmController>,
    filters: &Arc<Filters>,
) -> std::io::Result<()> {
    // Time: a power-off request that the client does not close waits 1 s at most.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    seccomp::spawn("api", ThreadKind::Api, filters, move || {
        runtime.block_on(async move {
            let listener = match tokio::net::UnixListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "api: cannot use the socket");
                    return;
                }
            };
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "api: accept failed");
                        continue;
                    }
                };
                let vm = vm.clone();
                tokio::spawn(async move {
                    let poweroff = Arc::new(AtomicBool::new(false));
                    let (service_vm, service_poweroff) = (vm.clone(), poweroff.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (vm, poweroff) = (service_vm.clone(), service_poweroff.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let limited = http_body_util::Limited::new(body, MAX_BODY);
                            let response = match limited.collect().await {
                                Ok(b) => handle(&parts, &b.to_bytes(), &vm, &poweroff),
                                Err(_) => too_large(),
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "api: connection error");
                    }
                    // The answer has been written and the client is gone.
                    if poweroff.load(Ordering::SeqCst) {
                        vm.poweroff();
                    }
                });
            }
        });
    })?;
    Ok(())
}

/// Largest request body (a snapshot request is a path).
const MAX_BODY: usize = 64 * 1024;

fn too_large() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::json!({ "error": "request body too large" }).to_string(),
    )));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response
}

fn handle(
    req: &hyper::http::request::Parts,
    body: &[u8],
    vm: &Arc<dyn VmController>,
    poweroff: &AtomicBool,
) -> Response<Full<Bytes>> {
    let reply = route(req.method.as_str(), req.uri.path(), body, vm.as_ref());
    if reply.poweroff_after {
        poweroff.store(true, Ordering::SeqCst);
        // A client that keeps the connection open does not delay the power-off for long.
        let vm = vm.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            vm.poweroff();
        });
    }
    tracing::info!(method = %req.method, path = req.uri.path(), status = reply.status, "api request");
    let body = reply.body.map(|b| b.to_string()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if reply.status != 204 && reply.status != 202 {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    response
}
