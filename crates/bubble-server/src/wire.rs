//! One signaling connection's IO, in one task: WebSocket frames from the socket into its [`Connection`], and
//! its [`Outbox`] onto the socket.
//!
//! An idle connection must cost almost nothing (issue 19: at most 4 KiB of server memory each at 10 000):
//! reads land in a buffer on the stack of the poll that reads them ([`READ_CHUNK`]), decoded in place by
//! `peerbubble_ws`, which keeps only a frame a read cut short; frames to write are encoded into a buffer that is
//! given back once written; the outbox keeps no buffer while empty. Reads and writes never wait on each other:
//! one poll writes what it can, reads what is there, and sleeps until the socket or the outbox has more, so that
//! an envelope costs the sender's task one wake-up and the recipient's another, and a session's own replies
//! (acks), queued while its task runs, none.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use peerbubble_proto::{ErrorCode, Nonce};
use peerbubble_ws::{Decoder, Frame, Opcode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::connection::{Connection, Flow, Input, error_frame};
use crate::hub::{Kill, Outbound, Outbox, SessionHandle};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Bytes one read takes from the socket, into a buffer on the stack.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per poll before the task lets others run.
const READS_PER_POLL: usize = 16;
/// Bytes encoded ahead of the socket; the outbox keeps the rest (and counts it against the session's budget).
const BATCH_BYTES: usize = 64 * 1024;
/// A write that makes no progress for this long marks the reader as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to write its last frames and hear the client close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The session is over; its last frames are to be written.
    Closing,
    /// The socket is closed or broken: nothing more can be written.
    Gone,
    /// Writes made no progress for [`WRITE_TIMEOUT`].
    Stalled,
}

/// What one poll of the socket side asks of the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The session asked for a timer (fresh TURN credentials).
    Rearm,
    End(End),
}

impl From<Flow> for Option<Step> {
    fn from(flow: Flow) -> Self {
        (flow == Flow::Close).then_some(Step::End(End::Closing))
    }
}

/// The socket, and the bytes between it and the session.
struct Wire<IO> {
    io: IO,
    decoder: Decoder,
    /// Encoded frames; `out[written..]` is still to be written.
    out: Vec<u8>,
    written: usize,
    /// A close frame is in `out`: nothing more is taken from the outbox.
    close_queued: bool,
    /// Armed while a write waits on the socket.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Wire<IO> {
    fn new(io: IO, max_message: usize) -> Self {
        Self { io, decoder: Decoder::new(max_message), out: Vec::new(), written: 0, close_queued: false, stall: None }
    }

    fn room(&self) -> bool {
        !self.close_queued && self.out.len() - self.written < BATCH_BYTES
    }

    /// Encodes queued frames while there is room.
    fn fill(&mut self, outbox: &Outbox) {
        if !self.room() {
            return;
        }
        outbox.take(|frame| {
            match frame {
                Outbound::Text(text) | Outbound::Backlog(text) => {
                    peerbubble_ws::encode(&mut self.out, Opcode::Text, text.as_bytes());
                }
                Outbound::Close { frame, code, reason } => {
                    peerbubble_ws::encode(&mut self.out, Opcode::Text, frame.as_bytes());
                    peerbubble_ws::encode_close(&mut self.out, code, reason);
                    self.close_queued = true;
                }
            }
            self.room()
        });
    }

    /// Writes what is encoded; Ready once all of it is written and flushed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<Result<(), End>> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    metrics.bytes_out(n);
                    if let Some(stall) = &mut self.stall {
                        stall.as_mut().reset(tokio::time::Instant::now() + WRITE_TIMEOUT);
                    }
                }
                Poll::Pending => {
                    let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
                    if stall.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(End::Stalled));
                    }
                    return Poll::Pending;
                }
            }
        }
        if !self.out.is_empty() {
            ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(|_| End::Gone)?;
            // Written: give the buffer back, an idle connection keeps none.
            self.out = Vec::new();
            self.written = 0;
            self.stall = None;
        }
        Poll::Ready(Ok(()))
    }

    /// The live connection: writes, reads and feeds the session until something needs the loop around it.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        conn: &mut Connection<'_>,
        metrics: &Metrics,
    ) -> Poll<Step> {
        let mut reads = 0;
        loop {
            if let Some(kill) = outbox.begin()
                && conn.input(Input::Kill(kill), Instant::now()) == Flow::Close
            {
                return Poll::Ready(Step::End(End::Closing));
            }
            self.fill(outbox);
            match self.poll_write_out(cx, metrics) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(end)) => return Poll::Ready(Step::End(end)),
                // Reads go on while a write waits: a busy reader must not stall its own sender.
                Poll::Pending => {}
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut buf);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Step::End(End::Gone)),
                Poll::Ready(Ok(())) => {
                    reads += 1;
                    if let Some(step) = self.decode(read.filled_mut(), conn, metrics) {
                        return Poll::Ready(step);
                    }
                    continue;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Step::End(End::Gone)),
                Poll::Pending => {}
            }
            if conn.ice_refresh.is_some() {
                return Poll::Ready(Step::Rearm);
            }
            if !outbox.wait(cx.waker(), self.room()) {
                return Poll::Pending;
            }
        }
    }

    /// Decodes what was read and hands it to the session.
    fn decode(&mut self, bytes: &mut [u8], conn: &mut Connection<'_>, metrics: &Metrics) -> Option<Step> {
        let now = Instant::now();
        let mut flow = Flow::Continue;
        let mut client_close = None;
        let out = &mut self.out;
        let result = self.decoder.decode(bytes, |frame| {
            match frame {
                Frame::Text(text) => {
                    metrics.bytes_in(text.len());
                    flow = conn.input(Input::Text(text.as_bytes()), now);
                }
                Frame::Binary(bytes) => {
                    metrics.bytes_in(bytes.len());
                    flow = conn.input(Input::Binary(bytes.len()), now);
                }
                Frame::Ping(payload) => peerbubble_ws::encode(out, Opcode::Pong, payload),
                Frame::Pong(_) => {}
                Frame::Close(close) => {
                    client_close = Some(close.map_or(1000, |(code, _)| code));
                    return ControlFlow::Break(());
                }
            }
            if flow == Flow::Close { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        match result {
            Ok(_) => {}
            Err(peerbubble_ws::Error::InvalidUtf8) => flow = conn.input(Input::InvalidUtf8, now),
            Err(peerbubble_ws::Error::TooLong(_)) => flow = conn.input(Input::TooLong, now),
            Err(err @ peerbubble_ws::Error::Protocol(_)) => {
                // The error's text names what was wrong, never the bytes.
                tracing::debug!(error = %err, "WebSocket protocol error");
                peerbubble_ws::encode_close(&mut self.out, err.close_code(), "protocol error");
                self.close_queued = true;
                return Some(Step::End(End::Closing));
            }
        }
        if let Some(code) = client_close {
            // The closing handshake: echo the client's code (RFC 6455 §5.5.1).
            peerbubble_ws::encode_close(&mut self.out, code, "");
            self.close_queued = true;
            return Some(Step::End(End::Closing));
        }
        flow.into()
    }

    /// The session is over: writes its last frames (up to the close frame), closes the sending side and waits
    /// for the client to close, discarding what it still sends (closing with unread bytes would reset the
    /// connection, and the client could lose the close frame).
    fn poll_finish(&mut self, cx: &mut Context<'_>, outbox: &Outbox, metrics: &Metrics) -> Poll<()> {
        loop {
            self.fill(outbox);
            if ready!(self.poll_write_out(cx, metrics)).is_err() {
                return Poll::Ready(());
            }
            if self.close_queued {
                break;
            }
            if !outbox.wait(cx.waker(), true) {
                return Poll::Pending;
            }
        }
        if ready!(Pin::new(&mut self.io).poll_shutdown(cx)).is_err() {
            return Poll::Ready(());
        }
        loop {
            let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut buf);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => continue,
                _ => return Poll::Ready(()),
            }
        }
    }
}

/// Serves one upgraded WebSocket connection until it ends.
pub(crate) async fn serve<IO>(io: IO, state: &AppState, host: Option<String>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let outbox = Arc::new(Outbox::default());
    let handle = SessionHandle::new(outbox.clone(), state.config.send_queue_bytes);
    // Let oversized messages through the WebSocket layer (up to twice the limit) so that the session core
    // can answer them with a clear `frame_too_large` instead of a bare protocol error.
    let mut wire = Wire::new(io, state.config.max_frame_bytes as usize * 2);
    let metrics = &state.metrics;

    let directory = state.directory.borrow().clone();
    let (Some(directory), Ok(nonce)) = (directory, Nonce::random()) else {
        let frame = error_frame(
            ErrorCode::Internal,
            "the server has no directory yet; retry shortly",
            None,
            Some(Duration::from_secs(1)),
        );
        handle.close(frame, 1013, "not ready");
        let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| wire.poll_finish(cx, &outbox, metrics))).await;
        outbox.close();
        return;
    };
    let mut conn = Connection::new(state, handle, directory, host, nonce, Instant::now());
    let mut dir_rx = state.directory.clone();
    dir_rx.mark_unchanged();
    let mut shutdown = state.shutdown.clone();
    // One timer per connection, re-armed only when it fires (the session core says whether anything expired
    // and when to look next, so a busy connection does not touch the timer wheel for every frame) or when the
    // session asks for fresh TURN credentials earlier.
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(conn.poll_timeout()));
    tokio::pin!(timer);
    let mut ice_at: Option<Instant> = None;

    let end = loop {
        let step = tokio::select! {
            step = poll_fn(|cx| wire.poll(cx, &outbox, &mut conn, metrics)) => Some(step),
            () = &mut timer => {
                let now = Instant::now();
                let mut flow = Flow::Continue;
                if ice_at.is_some_and(|at| at <= now) {
                    ice_at = None;
                    flow = conn.input(Input::IceRefresh, now);
                }
                if flow == Flow::Continue {
                    flow = conn.input(Input::Timeout, now);
                }
                let next = ice_at.map_or(conn.poll_timeout(), |at| at.min(conn.poll_timeout()));
                timer.as_mut().reset(tokio::time::Instant::from_std(next));
                flow.into()
            }
            changed = dir_rx.changed() => match (changed, dir_rx.borrow_and_update().clone()) {
                (Ok(()), Some(directory)) => conn.input(Input::DirectoryChanged(directory), Instant::now()).into(),
                _ => None,
            },
            _ = shutdown.wait_for(|s| *s) => conn.input(Input::Shutdown, Instant::now()).into(),
        };
        if let Some(Step::End(end)) = step {
            break end;
        }
        if let Some(at) = conn.ice_refresh.take() {
            ice_at = Some(at);
            let at = tokio::time::Instant::from_std(at);
            if at < timer.deadline() {
                timer.as_mut().reset(at);
            }
        }
    };
    if end == End::Stalled {
        // Nothing more can be written; the session ends as a slow consumer's.
        let kill = Kill { code: ErrorCode::SlowConsumer, message: "writes to this session stalled" };
        let _ = conn.input(Input::Kill(kill), Instant::now());
    }
    // The session's registration ends here if it has not already.
    drop(conn);
    if end == End::Closing {
        let _ = tokio::time::timeout(CLOSE_GRACE, poll_fn(|cx| wire.poll_finish(cx, &outbox, metrics))).await;
    }
    outbox.close();
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::config::Config;

    /// The connection task's state is allocated once per connection for its whole life: it is most of what an
    /// idle connection costs (issue 19: at most 4 KiB each, everything included).
    #[test]
    fn a_connection_task_stays_small() {
        let (_publish, directory) = watch::channel(None);
        let (_stop, shutdown) = watch::channel(false);
        let state = AppState::new(Config::default(), Metrics::new(), directory, shutdown, None, None, None, None);
        let (io, _peer) = tokio::io::duplex(64);
        let future = serve(io, &state, None);
        let size = size_of_val(&future);
        eprintln!("connection future: {size} bytes; Outbox {} bytes", size_of::<Outbox>());
        assert!(size <= 1280, "the connection task's future takes {size} bytes");
    }
}
