//! Any `:authority` on Unix-socket listeners.
//!
//! gRPC clients that dial a Unix socket send the socket path as the HTTP/2 `:authority`
//! (grpcio sends it percent-encoded, `tmp%2Faasp.sock`; grpc-java and older grpc-go send it
//! raw). Both are invalid URI authorities, and the HTTP/2 server (h2, `Peer::convert_poll_message`
//! in `server.rs`) resets such a stream with PROTOCOL_ERROR before any service sees it; h2 has
//! no option to relax this. On a Unix socket the authority carries no information (the socket
//! path already names the peer), so this adapter sits between the socket and the HTTP/2 server
//! and, in the client-to-server direction only, re-encodes each request header block with an
//! invalid `:authority` replaced by `localhost`.
//!
//! Re-encoding: the client's header blocks are decoded with a decoder that mirrors the client's
//! HPACK encoder (dynamic table and size updates included), and written back as literals that
//! are never indexed, so the server's own HPACK decoder table stays empty and the two sides can
//! never disagree about it. Every other frame, and everything before or instead of the HTTP/2
//! preface (HTTP/1), passes through unchanged. A header block larger than [`MAX_BLOCK`] or one
//! that does not decode ends the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE default):
/// re-encoded blocks are cut into frames of at most this size.
const FRAME_MAX: usize = 16_384;
/// The largest header block accepted (hyper's default header list limit is 16 KiB decoded).
pub const MAX_BLOCK: usize = 64 << 10;
/// HPACK's default dynamic table size, which the server never raises.
const TABLE_SIZE: usize = 4096;

enum State {
    /// Collecting the first 24 bytes to tell HTTP/2 from HTTP/1.
    Preface,
    /// HTTP/2 frames.
    Frames,
    /// Not HTTP/2 (or gave up): bytes pass through.
    Passthrough,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Wraps a Unix-socket stream; see the module documentation.
pub struct AnyAuthority<S> {
    inner: S,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AnyAuthority {
            inner,
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            block: None,
            decoder,
        }
    }

    /// Moves what can be processed from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Passthrough => {
                    self.output.append(&mut self.input);
                    return Ok(());
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input.get(..n) != PREFACE.get(..n) {
                        self.state = State::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.state = State::Frames;
                }
                State::Frames => {
                    let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) = self.input.get(..9)
                    else {
                        return Ok(());
                    };
                    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
                    if len > FRAME_MAX && kind != HEADERS && kind != CONTINUATION {
                        // Larger than the server allows: let the server refuse it as it will.
                        self.state = State::Passthrough;
                        continue;
                    }
                    let Some(payload) = self.input.get(9..9 + len) else {
                        if len > MAX_BLOCK {
                            return Err(too_large());
                        }
                        return Ok(());
                    };
                    let payload = payload.to_vec();
                    let frame: Vec<u8> = self.input.drain(..9 + len).collect();
                    match kind {
                        HEADERS => self.headers(stream, flags, &payload)?,
                        CONTINUATION => self.continuation(stream, flags, &payload)?,
                        _ => self.output.extend_from_slice(&frame),
                    }
                }
            }
        }
    }

    fn headers(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let mut rest = payload;
        let mut pad = 0usize;
        if flags & PADDED != 0 {
            let (&n, tail) = rest.split_first().ok_or_else(malformed)?;
            pad = usize::from(n);
            rest = tail;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let (p, tail) = rest.split_at_checked(5).ok_or_else(malformed)?;
            priority = Some(<[u8; 5]>::try_from(p).map_err(|_| malformed())?);
            rest = tail;
        }
        let fragment = rest
            .get(..rest.len().checked_sub(pad).ok_or_else(malformed)?)
            .ok_or_else(malformed)?;
        if self.block.is_some() {
            return Err(malformed());
        }
        self.block = Some(Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn continuation(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let block = self.block.as_mut().ok_or_else(malformed)?;
        if block.stream != stream {
            return Err(malformed());
        }
        if block.fragment.len().saturating_add(payload.len()) > MAX_BLOCK {
            return Err(too_large());
        }
        block.fragment.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Decodes the collected block, fixes `:authority`, and writes it back as frames.
    fn finish_block(&mut self) -> io::Result<()> {
        let block = self.block.take().ok_or_else(malformed)?;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let mut failed = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    b"localhost"
                } else {
                    &value
                };
                if encoded.len() > MAX_BLOCK * 2 {
                    failed = true;
                    return;
                }
                literal_never_indexed(&name, value, &mut encoded);
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        if failed {
            return Err(too_large());
        }
        let mut chunks = encoded.chunks(FRAME_MAX - 5).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.unwrap_or_default();
        let priority: &[u8] = if block.priority.is_some() {
            &priority
        } else {
            &[]
        };
        self.frame(HEADERS, flags, block.stream, &[priority, first]);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            self.frame(CONTINUATION, flags, block.stream, &[chunk]);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // At most FRAME_MAX: the top byte of the 32-bit length is always zero.
        let [_, l0, l1, l2] = u32::try_from(len).unwrap_or(0).to_be_bytes();
        self.output.extend_from_slice(&[l0, l1, l2]);
        self.output.push(kind);
        self.output.push(flags);
        self.output.extend_from_slice(&stream.to_be_bytes());
        for part in parts {
            self.output.extend_from_slice(part);
        }
    }
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 header frames")
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "HTTP/2 header block too large")
}

fn valid_authority(value: &[u8]) -> bool {
    axum::http::uri::Authority::try_from(value).is_ok()
}

/// HPACK "literal header field never indexed, new name" (RFC 7541 §6.2.3), strings without
/// Huffman coding.
fn literal_never_indexed(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x10);
    string(name, out);
    string(value, out);
}

/// An HPACK string literal: 7-bit-prefix length (H = 0), then the bytes (RFC 7541 §5.1, §5.2).
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    let mut n = bytes.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(bytes);
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this.output.get(this.sent..).filter(|p| !p.is_empty()) {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(pending.get(..n).unwrap_or(&[]));
                this.sent += n;
                if this.sent == this.output.len() {
                    this.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        // End of stream: whatever is left (an incomplete frame) goes as is.
                        this.output.append(&mut this.input);
                        if this.output.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.input.extend_from_slice(read.filled());
                    if let Err(e) = this.process() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
