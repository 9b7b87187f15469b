//! The HTTP ceiling the ingest benchmark compares against: a bare hyper server that
//! reads each request's body and answers 202, nothing else. `benches/ingest.sh` runs
//! it on the port given as the first argument.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes());
    let status = if body.is_ok() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"queued\"}")));
    *response.status_mut() = status;
    Ok(response)
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|port| port.parse().ok())
        .unwrap_or(8090);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}
