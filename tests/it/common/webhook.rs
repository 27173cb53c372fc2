//! A webhook receiver: records every request (headers and body) and answers the statuses
//! it was told to, in order, then 200.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Bytes,
    /// The status answered.
    pub status: u16,
}

impl Delivery {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A listener on 127.0.0.1:0 taking webhook deliveries.
pub struct WebhookReceiver {
    addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    accept: JoinHandle<()>,
}

impl WebhookReceiver {
    /// A receiver answering `statuses` to the first requests, in order, then 200.
    pub async fn start(statuses: &[u16]) -> WebhookReceiver {
        Self::answering("127.0.0.1", statuses, None).await
    }

    /// A receiver on `ip`:0 (another loopback address such as 127.0.0.2).
    pub async fn start_on(ip: &str, statuses: &[u16]) -> WebhookReceiver {
        Self::answering(ip, statuses, None).await
    }

    /// A receiver answering every request `status` with `Location: to` (a redirect).
    pub async fn redirecting(status: u16, to: &str) -> WebhookReceiver {
        Self::answering("127.0.0.1", &[status; 64], Some(to.to_owned())).await
    }

    /// `statuses` in order (then 200), each with a `Location` header when given, on `ip`.
    async fn answering(ip: &str, statuses: &[u16], location: Option<String>) -> WebhookReceiver {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let planned: Arc<Mutex<VecDeque<u16>>> =
            Arc::new(Mutex::new(statuses.iter().copied().collect()));
        let accept = {
            let deliveries = deliveries.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (deliveries, planned) = (deliveries.clone(), planned.clone());
                    let location = location.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (deliveries, planned) = (deliveries.clone(), planned.clone());
                            let location = location.clone();
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().to_string();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = planned.lock().unwrap().pop_front().unwrap_or(200);
                                deliveries.lock().unwrap().push(Delivery {
                                    method,
                                    path,
                                    headers,
                                    body,
                                    status,
                                });
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                if let Some(to) = location {
                                    resp.headers_mut().insert("location", to.parse().unwrap());
                                }
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        WebhookReceiver {
            addr,
            deliveries,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
