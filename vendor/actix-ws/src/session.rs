use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use actix_http::ws::{CloseReason, Item, Message};
use actix_web::web::Bytes;
use bytestring::ByteString;
use futures_channel::mpsc::Sender;

/// A handle into the websocket session.
///
/// This type can be used to send messages into the WebSocket.
#[derive(Clone)]
pub struct Session {
    inner: Option<Sender<Message>>,
    closed: Arc<AtomicBool>,
}

/// Why [`Session::try_text`] did not queue its text (confab patch).
#[derive(Debug)]
pub enum TryText {
    /// The channel is full; here is the text back, to send with [`Session::text`].
    Full(ByteString),
    /// The session is closed.
    Closed,
}

/// The error representing a closed websocket session
#[derive(Debug)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Session is closed")
    }
}

impl std::error::Error for Closed {}

impl Session {
    pub(super) fn new(inner: Sender<Message>) -> Self {
        Session {
            inner: Some(inner),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn pre_check(&mut self) {
        if self.closed.load(Ordering::Relaxed) {
            self.inner.take();
        }
    }

    /// Sends text into the WebSocket.
    ///
    /// ```no_run
    /// # use actix_ws::Session;
    /// # async fn test(mut session: Session) {
    /// if session.text("Some text").await.is_err() {
    ///     // session closed
    /// }
    /// # }
    /// ```
    pub async fn text(&mut self, msg: impl Into<ByteString>) -> Result<(), Closed> {
        self.pre_check();
        if let Some(inner) = self.inner.as_mut() {
            send(inner, Message::Text(msg.into())).await
        } else {
            Err(Closed)
        }
    }

    /// Queues text without waiting: what `text` does when the channel has room, and gives the
    /// text back when it has none (then `text` waits for room).
    ///
    /// confab patch: a busy session delivers most frames to a connection that keeps up, and
    /// awaiting `text` for each one cost a boxed future, a `select!` against the session's
    /// close signal and a waker registration per frame.
    pub fn try_text(&mut self, msg: ByteString) -> Result<(), TryText> {
        self.pre_check();
        let Some(inner) = self.inner.as_mut() else {
            return Err(TryText::Closed);
        };
        inner.try_send(Message::Text(msg)).map_err(|e| {
            if e.is_full() {
                match e.into_inner() {
                    Message::Text(text) => TryText::Full(text),
                    _ => TryText::Closed,
                }
            } else {
                TryText::Closed
            }
        })
    }

    /// Sends raw bytes into the WebSocket.
    ///
    /// ```no_run
    /// # use actix_ws::Session;
    /// # async fn test(mut session: Session) {
    /// if session.binary(&b"some bytes"[..]).await.is_err() {
    ///     // session closed
    /// }
    /// # }
    /// ```
    pub async fn binary(&mut self, msg: impl Into<Bytes>) -> Result<(), Closed> {
        self.pre_check();
        if let Some(inner) = self.inner.as_mut() {
            send(inner, Message::Binary(msg.into())).await
        } else {
            Err(Closed)
        }
    }

    /// Pings the client.
    ///
    /// For many applications, it will be important to send regular pings to keep track of if the
    /// client has disconnected
    ///
    /// ```no_run
    /// # use actix_ws::Session;
    /// # async fn test(mut session: Session) {
    /// if session.ping(b"").await.is_err() {
    ///     // session is closed
    /// }
    /// # }
    /// ```
    pub async fn ping(&mut self, msg: &[u8]) -> Result<(), Closed> {
        self.pre_check();
        if let Some(inner) = self.inner.as_mut() {
            send(inner, Message::Ping(Bytes::copy_from_slice(msg))).await
        } else {
            Err(Closed)
        }
    }

    /// Pongs the client.
    ///
    /// ```no_run
    /// # use actix_ws::{Message, Session};
    /// # async fn test(mut session: Session, msg: Message) {
    /// match msg {
    ///     Message::Ping(bytes) => {
    ///         let _ = session.pong(&bytes).await;
    ///     }
    ///     _ => (),
    /// }
    /// # }
    pub async fn pong(&mut self, msg: &[u8]) -> Result<(), Closed> {
        self.pre_check();
        if let Some(inner) = self.inner.as_mut() {
            send(inner, Message::Pong(Bytes::copy_from_slice(msg))).await
        } else {
            Err(Closed)
        }
    }

    /// Manually controls sending continuations.
    ///
    /// Be wary of this method. Continuations represent multiple frames that, when combined, are
    /// presented as a single message. They are useful when the entire contents of a message are
    /// not available all at once. However, continuations MUST NOT be interrupted by other Text or
    /// Binary messages. Control messages such as Ping, Pong, or Close are allowed to interrupt a
    /// continuation.
    ///
    /// Continuations must be initialized with a First variant, and must be terminated by a Last
    /// variant, with only Continue variants sent in between.
    ///
    /// ```no_run
    /// # use actix_ws::{Item, Session};
    /// # async fn test(mut session: Session) -> Result<(), Box<dyn std::error::Error>> {
    /// session.continuation(Item::FirstText("Hello".into())).await?;
    /// session.continuation(Item::Continue(b", World"[..].into())).await?;
    /// session.continuation(Item::Last(b"!"[..].into())).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn continuation(&mut self, msg: Item) -> Result<(), Closed> {
        self.pre_check();
        if let Some(inner) = self.inner.as_mut() {
            send(inner, Message::Continuation(msg)).await
        } else {
            Err(Closed)
        }
    }

    /// Sends a close message, and consumes the session.
    ///
    /// All clones will return `Err(Closed)` if used after this call.
    ///
    /// ```no_run
    /// # use actix_ws::{Closed, Session};
    /// # async fn test(mut session: Session) -> Result<(), Closed> {
    /// session.close(None).await
    /// # }
    /// ```
    pub async fn close(mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        self.pre_check();

        if let Some(mut inner) = self.inner.take() {
            self.closed.store(true, Ordering::Relaxed);
            send(&mut inner, Message::Close(reason)).await
        } else {
            Err(Closed)
        }
    }
}

/// Waits for room in the channel, then queues `msg` (what tokio's `Sender::send` did).
///
/// confab patch: the channel is `futures-channel`'s, not tokio's. tokio's bounded channel
/// allocates a block of 32 message slots when it is created, ~1.8 KB that every open WebSocket
/// kept (heaptrack of 5,000 idle sessions); this one allocates its shared state only and one
/// node per queued message.
async fn send(inner: &mut Sender<Message>, msg: Message) -> Result<(), Closed> {
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(|_| Closed)?;
    inner.start_send(msg).map_err(|_| Closed)
}
