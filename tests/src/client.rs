//! Real clients: HTTP over reqwest, WebSocket over tokio-tungstenite. No mocks.

use confab_protocol::{ThreadId, UserRef};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The default wait for anything expected to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Ask `http_base` (`http://127.0.0.1:port`) to upgrade to a WebSocket with `token` over plain
/// HTTP, for a test that expects the node to refuse before upgrading: the status, the
/// `Retry-After` seconds (0 when absent) and the JSON body.
pub async fn refused_upgrade(http_base: &str, token: &str) -> (u16, u64, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{http_base}/ws?token={token}"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, retry, resp.json().await.unwrap_or_default())
}

/// Open a TCP connection to the node on `port` and send a WebSocket upgrade request with
/// `token`, for tests that read (or drop) the raw connection themselves.
pub async fn raw_upgrade(port: u16, token: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp
}

/// An HTTP client bound to one node.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

/// A response's status and JSON body (`Null` when empty).
pub type Reply = (u16, Value);

impl Http {
    /// A client for `base` (`http://127.0.0.1:port`).
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .unwrap_or_else(|e| panic!("http client: {e}")),
        }
    }

    async fn finish(resp: reqwest::Result<reqwest::Response>) -> Reply {
        let resp = resp.unwrap_or_else(|e| panic!("http request failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Any method, with an optional token and an optional JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut r = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        Self::finish(r.send().await).await
    }

    /// POST JSON with an optional token.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// POST a raw body (for malformed-JSON tests).
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: &'static str) -> Reply {
        let mut r = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        Self::finish(r.send().await).await
    }

    /// GET with an optional token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    /// DELETE with an optional token.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(reqwest::Method::DELETE, path, token, None)
            .await
    }

    /// GET and return the raw text (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("http request failed: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// Register then log in.
    pub async fn register_and_login(&self, username: &str, password: &str) -> (UserRef, String) {
        let (s, b) = self
            .post(
                "/api/v1/users",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(s, 201, "register {username}: {b}");
        let (s, b) = self
            .post(
                "/api/v1/sessions",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(s, 200, "login {username}: {b}");
        let user: UserRef =
            serde_json::from_value(b["user"].clone()).unwrap_or_else(|e| panic!("login body: {e}"));
        let token = b["token"].as_str().unwrap_or_default().to_owned();
        (user, token)
    }

    /// Create a thread; returns its id (asserting 201).
    pub async fn create_thread(
        &self,
        token: &str,
        members: &[&UserRef],
        name: Option<&str>,
    ) -> ThreadId {
        let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
        let mut body = json!({"member_ids": ids});
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        let (s, b) = self.post("/api/v1/threads", Some(token), body).await;
        assert_eq!(s, 201, "create thread: {b}");
        b["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("thread id in {b}"))
    }
}

/// A WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `hello` frame.
    pub hello: Value,
    counter: u64,
}

impl Ws {
    /// Connect with a token (query parameter) and read the `hello`.
    pub async fn connect(base: &str, token: &str) -> Ws {
        Self::connect_url(&format!("{base}?token={token}")).await
    }

    /// Connect to a full URL and read the `hello`.
    pub async fn connect_url(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connect timed out: {url}"))
            .unwrap_or_else(|e| panic!("connect failed: {e}"));
        let mut ws = Ws {
            stream,
            hello: Value::Null,
            counter: 0,
        };
        let hello = ws.recv_until(|f| f["type"] == "hello").await;
        ws.hello = hello;
        ws
    }

    /// A fresh request id.
    pub fn next_req(&mut self) -> String {
        self.counter += 1;
        format!("r{}", self.counter)
    }

    /// Send a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Send a raw text frame.
    pub async fn send_text(&mut self, text: String) {
        self.stream
            .send(WsMsg::Text(text.into()))
            .await
            .unwrap_or_else(|e| panic!("ws send: {e}"));
    }

    /// Send a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: WsMsg) {
        self.stream
            .send(msg)
            .await
            .unwrap_or_else(|e| panic!("ws send: {e}"));
    }

    /// The next text frame as JSON, or `None` on timeout; panics if the socket closes.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(WsMsg::Text(t))) => {
                    return Some(
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad json {t}: {e}")),
                    )
                }
                Some(Ok(WsMsg::Close(c))) => panic!("socket closed: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("ws error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// The next text frame (`Ok(Some)`), nothing within `wait` (`Ok(None)`), or the close code
    /// when the socket closes (`Err(code)`; 1006 when it ends without a close frame).
    pub async fn next_frame_or_close(&mut self, wait: Duration) -> Result<Option<Value>, u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(Ok(WsMsg::Text(t)))) => {
                    return Ok(Some(serde_json::from_str(&t).unwrap_or(Value::Null)))
                }
                Ok(Some(Ok(WsMsg::Close(c)))) => {
                    return Err(c.map(|c| u16::from(c.code)).unwrap_or(1005))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Err(1006),
            }
        }
    }

    /// Read frames until one matches, within [`WAIT`]; panics otherwise.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_until_within(pred, WAIT).await
    }

    /// Read frames until one matches, within `wait`.
    pub async fn recv_until_within(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        wait: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(f) if pred(&f) => return f,
                Some(_) => continue,
                None => panic!("no matching frame within {wait:?}"),
            }
        }
    }

    /// Assert that no frame matching `pred` arrives within `wait` (for "never sees it").
    pub async fn expect_none(&mut self, pred: impl Fn(&Value) -> bool, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            if let Some(f) = self.next_frame(left).await {
                assert!(!pred(&f), "unexpected frame: {f}");
            }
        }
    }

    /// The close code the server sends next (within `wait`), skipping other frames.
    pub async fn expect_close(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(WsMsg::Close(c)))) => return c.map(|c| u16::from(c.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Some(1006),
            }
        }
    }

    /// Send a message and wait for its ack (or error); returns the reply.
    pub async fn send_msg(&mut self, thread: ThreadId, client_msg_id: &str, body: &str) -> Value {
        let req = self.next_req();
        self.send_json(json!({"type":"send","req":req,"thread_id":thread,"client_msg_id":client_msg_id,"body":body}))
            .await;
        let r = req.clone();
        self.recv_until(move |f| f["req"] == r.as_str()).await
    }

    /// Send a request frame (adds `req`) and wait for its reply.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let req = self.next_req();
        frame["req"] = json!(req);
        self.send_json(frame).await;
        self.recv_until(move |f| f["req"] == req.as_str()).await
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
