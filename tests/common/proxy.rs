//! A fault-injecting proxy in front of moto: every call is forwarded unless a rule
//! says to answer it with an error instead (before forwarding: the call never
//! happened; or after: it happened and the answer is lost), or to forward it late (a
//! service's latency across a network). It records the calls, so a
//! test can check what reached the service and in which order.

use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{Request, Response, StatusCode};

/// One call through the proxy.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `X-Amz-Target` operation, such as `AWSStepFunctions.StartExecution`.
    pub operation: String,
    /// How many calls of this operation came before this one.
    pub index: usize,
    pub body: serde_json::Value,
    /// Whether it was forwarded to the service.
    pub forwarded: bool,
    pub at: std::time::Instant,
}

impl Call {
    /// Whether the operation is `name` (without its service prefix).
    pub fn is(&self, name: &str) -> bool {
        self.operation.rsplit('.').next() == Some(name)
    }
}

/// What the proxy does with a call.
pub enum Fault {
    Forward,
    /// Answer this, without forwarding.
    Answer(u16, String),
    /// Forward, then answer this instead of the service's answer.
    ForwardThenAnswer(u16, String),
    /// Forward after this long: a service across a network, not on this machine.
    Delay(std::time::Duration),
}

/// A JSON-protocol error answer.
pub fn error(status: u16, code: &str) -> (u16, String) {
    (
        status,
        serde_json::json!({"__type": code, "message": format!("injected {code}")}).to_string(),
    )
}

pub type Rule = dyn Fn(&Call) -> Fault + Send + Sync;

pub struct Proxy {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Proxy {
    /// Starts a proxy to `target` that applies `rule` to every call.
    pub async fn start(
        target: &str,
        rule: impl Fn(&Call) -> Fault + Send + Sync + 'static,
    ) -> Proxy {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let rule: Arc<Rule> = Arc::new(rule);
        let client = reqwest::Client::new();
        let target = target.to_string();
        let recorded = calls.clone();
        let handler = move |request: Request<Body>| {
            let client = client.clone();
            let target = target.clone();
            let rule = rule.clone();
            let calls = recorded.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = to_bytes(body, 10 * 1024 * 1024).await.unwrap();
                let operation = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let mut call = {
                    let calls = calls.lock().unwrap();
                    Call {
                        index: calls
                            .iter()
                            .filter(|call| call.operation == operation)
                            .count(),
                        operation,
                        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        forwarded: false,
                        at: std::time::Instant::now(),
                    }
                };
                let fault = rule(&call);
                if let Fault::Answer(status, text) = &fault {
                    calls.lock().unwrap().push(call);
                    return json_response(*status, text.clone());
                }
                call.forwarded = true;
                calls.lock().unwrap().push(call);
                if let Fault::Delay(delay) = &fault {
                    tokio::time::sleep(*delay).await;
                }
                let mut forward =
                    client.request(parts.method.clone(), format!("{target}{}", parts.uri));
                for (name, value) in &parts.headers {
                    if name != "host" && name != "content-length" {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.body(body.to_vec()).send().await.unwrap();
                if let Fault::ForwardThenAnswer(status, text) = fault {
                    return json_response(status, text);
                }
                let status = answer.status();
                let content_type = answer.headers().get("content-type").cloned();
                let bytes = answer.bytes().await.unwrap();
                let mut response = Response::builder().status(status);
                if let Some(content_type) = content_type {
                    response = response.header("content-type", content_type);
                }
                response.body(Body::from(bytes)).unwrap()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy {
            url: format!("http://{address}"),
            calls,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn json_response(status: u16, text: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/x-amz-json-1.0")
        .body(Body::from(text))
        .unwrap()
}
