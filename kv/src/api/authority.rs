//! Client connections whose HTTP/2 `:authority` is a URL.
//!
//! etcdctl 3.4 (grpc-go) dials the per-endpoint commands (`endpoint status`, `endpoint hashkv`,
//! `defrag`, ...) with a `passthrough:///http://host:port` target, so their requests carry
//! `:authority: http://host:port`. etcd's Go server accepts that; hyper's h2 refuses the stream
//! as malformed (RST_STREAM PROTOCOL_ERROR) and there is no switch to relax it.
//! [`AuthorityFixingStream`] sits between the accepted socket and tonic and rewrites the header
//! blocks the client sends: an `:authority` that is a URL becomes the URL's `host:port`, one
//! that is neither is dropped (gRPC does not route on it), everything else is unchanged.
//!
//! The connection's first header block decides. If its `:authority` needs no fixing (every
//! client but grpc-go's passthrough dialer: a client's authority is the same for all the
//! requests of a connection), it passes as sent and so does the rest of the connection, byte for
//! byte: decoding every block cost a tenth of a member's CPU under load. Otherwise every header
//! block is decoded with the client's HPACK context and re-encoded with ours (so the server's
//! decoder follows our encoder, never the client's); all other frames pass through byte for
//! byte without being buffered whole. A byte stream that does not open with the HTTP/2 preface
//! passes through untouched.
//!
//! Decoding is bounded as h2 bounds it, so one small connection cannot make the member allocate
//! without limit: the client's HPACK dynamic table may not grow past the 4096 bytes HTTP/2
//! servers advertise (SETTINGS_HEADER_TABLE_SIZE, which tonic leaves at its default), and a
//! header block may decode to at most [`MAX_HEADER_LIST`] bytes (an "HPACK bomb", a block that
//! names one large table entry thousands of times, is refused at that point).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The largest frame payload we emit: HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the
/// client API server (tonic's default) keeps.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The largest header block we accept from a client; etcd requests carry a few hundred bytes.
const MAX_HEADER_BLOCK: usize = 1 << 20;
const READ_CHUNK: usize = 16_384;
/// The dynamic table size the server advertises (HTTP/2's default SETTINGS_HEADER_TABLE_SIZE);
/// a client's table size update beyond it is refused.
const HEADER_TABLE_SIZE: usize = 4096;
/// The most a header block may decode to, counted as HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE
/// counts (name + value + 32 per field).
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// What HTTP/2 adds to each field when it counts a header list's size (RFC 9113 §6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// Why a client's byte stream could not be rewritten; the connection is closed with it.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(
        "HTTP/2 frame of type {frame_type:#x} on stream {stream} where a CONTINUATION of stream {expected} must follow"
    )]
    ContinuationExpected {
        frame_type: u8,
        stream: u32,
        expected: u32,
    },
    #[error("HTTP/2 CONTINUATION on stream {0} without a header block to continue")]
    UnexpectedContinuation(u32),
    #[error("HTTP/2 HEADERS frame of {0} bytes is shorter than its padding and priority fields")]
    MalformedHeaders(usize),
    #[error("HTTP/2 header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("HTTP/2 header block decodes to over {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge,
    #[error("HPACK: {0}")]
    Hpack(String),
}

impl From<RewriteError> for io::Error {
    fn from(error: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// A client connection whose header blocks are rewritten as the module comment says; writes
/// go to the socket unchanged.
pub struct AuthorityFixingStream<S> {
    inner: S,
    rewriter: Rewriter,
    input: Vec<u8>,
    output: Vec<u8>,
    output_read: usize,
}

impl<S> AuthorityFixingStream<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            input: Vec::new(),
            output: Vec::new(),
            output_read: 0,
        }
    }

    fn has_output(&self) -> bool {
        self.output_read < self.output.len()
    }

    /// Hands out rewritten bytes; false when there are none.
    fn drain_output(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.output[self.output_read..];
        if pending.is_empty() {
            return false;
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.output_read += n;
        if self.output_read == self.output.len() {
            self.output.clear();
            self.output_read = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rewriter.passing_through() && this.input.is_empty() && !this.has_output() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.drain_output(buf) {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
            let filled = chunk_buf.filled();
            if filled.is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.input.extend_from_slice(filled);
            this.rewriter.feed(&mut this.input, &mut this.output)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFixingStream<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Where the rewriter is in the client's byte stream.
enum Phase {
    /// Checking the connection preface; `matched` bytes of it seen so far.
    Preface { matched: usize },
    /// Between frames, or inside one.
    Frames,
    /// The payload of a frame that passes unchanged: this many bytes still to copy.
    PassingPayload(usize),
    /// Not HTTP/2 with prior knowledge: everything passes.
    Passthrough,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
    /// The block's frames as the client sent them.
    raw: Vec<u8>,
}

/// The synchronous core: turns the client's bytes into what the server reads.
struct Rewriter {
    phase: Phase,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// A header block was re-encoded: from then on every block must be (HPACK contexts).
    rewriting: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            phase: Phase::Preface { matched: 0 },
            pending: None,
            rewriting: false,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }
}

/// A decoded header block: (name, value) pairs in order.
type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes one header block, refusing it once its fields add up to over [`MAX_HEADER_LIST`]
/// (fields past that point are only counted, never copied).
fn decode_bounded(
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &[u8],
) -> Result<HeaderList, RewriteError> {
    let mut headers = Vec::new();
    let mut size = 0usize;
    decoder
        .decode_with_cb(block, |name, value| {
            size = size.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
            if size <= MAX_HEADER_LIST {
                headers.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(|e| RewriteError::Hpack(format!("{e:?}")))?;
    if size > MAX_HEADER_LIST {
        return Err(RewriteError::HeaderListTooLarge);
    }
    Ok(headers)
}

/// A frame header, as RFC 9113 §4.1 lays it out.
struct FrameHeader {
    length: usize,
    frame_type: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8]) -> Self {
        Self {
            length: usize::from(bytes[0]) << 16
                | usize::from(bytes[1]) << 8
                | usize::from(bytes[2]),
            frame_type: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let length = u32::try_from(self.length).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&length[1..]);
        out.push(self.frame_type);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

impl Rewriter {
    /// Whether everything from here on passes unchanged.
    fn passing_through(&self) -> bool {
        matches!(self.phase, Phase::Passthrough)
    }

    /// Consumes what it can of `input` (complete frame headers, header frames, any part of
    /// other payloads) and appends the server's bytes to `output`.
    fn feed(&mut self, input: &mut Vec<u8>, output: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = &input[consumed..];
            let used = match self.phase {
                Phase::Preface { matched } => self.check_preface(matched, rest, output),
                Phase::Passthrough => {
                    output.extend_from_slice(rest);
                    rest.len()
                }
                Phase::PassingPayload(remaining) => {
                    let n = remaining.min(rest.len());
                    output.extend_from_slice(&rest[..n]);
                    self.phase = match remaining - n {
                        0 => Phase::Frames,
                        left => Phase::PassingPayload(left),
                    };
                    n
                }
                Phase::Frames => match self.next_frame(rest, output)? {
                    Some(used) => used,
                    None => break,
                },
            };
            consumed += used;
        }
        input.drain(..consumed);
        Ok(())
    }

    fn check_preface(&mut self, matched: usize, rest: &[u8], output: &mut Vec<u8>) -> usize {
        let wanted = &PREFACE[matched..];
        let n = wanted.len().min(rest.len());
        output.extend_from_slice(&rest[..n]);
        self.phase = if rest[..n] != wanted[..n] {
            Phase::Passthrough
        } else if n == wanted.len() {
            Phase::Frames
        } else {
            Phase::Preface {
                matched: matched + n,
            }
        };
        n
    }

    /// Handles the frame at the start of `rest`; `None` until enough of it has arrived.
    fn next_frame(
        &mut self,
        rest: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<Option<usize>, RewriteError> {
        if rest.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let header = FrameHeader::parse(rest);
        let is_header_frame = matches!(header.frame_type, FRAME_HEADERS | FRAME_CONTINUATION);
        if !is_header_frame {
            if let Some(pending) = &self.pending {
                return Err(RewriteError::ContinuationExpected {
                    frame_type: header.frame_type,
                    stream: header.stream,
                    expected: pending.stream,
                });
            }
            output.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
            if header.length > 0 {
                self.phase = Phase::PassingPayload(header.length);
            }
            return Ok(Some(FRAME_HEADER_LEN));
        }
        if header.length > MAX_HEADER_BLOCK {
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        let frame_len = FRAME_HEADER_LEN + header.length;
        if rest.len() < frame_len {
            return Ok(None);
        }
        let payload = &rest[FRAME_HEADER_LEN..frame_len];
        if header.frame_type == FRAME_HEADERS {
            self.start_block(&header, payload)?;
        } else {
            self.continue_block(&header, payload)?;
        }
        if let Some(pending) = &mut self.pending {
            pending.raw.extend_from_slice(&rest[..frame_len]);
        }
        if header.flags & FLAG_END_HEADERS != 0 {
            self.finish_block(output)?;
        }
        Ok(Some(frame_len))
    }

    fn start_block(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<(), RewriteError> {
        if let Some(pending) = &self.pending {
            return Err(RewriteError::ContinuationExpected {
                frame_type: header.frame_type,
                stream: header.stream,
                expected: pending.stream,
            });
        }
        let malformed = || RewriteError::MalformedHeaders(payload.len());
        let (padding, body) = if header.flags & FLAG_PADDED != 0 {
            let (&pad, body) = payload.split_first().ok_or_else(malformed)?;
            (usize::from(pad), body)
        } else {
            (0, payload)
        };
        let (priority, body) = if header.flags & FLAG_PRIORITY != 0 {
            let (fields, body) = body.split_at_checked(PRIORITY_LEN).ok_or_else(malformed)?;
            let mut priority = [0u8; PRIORITY_LEN];
            priority.copy_from_slice(fields);
            (Some(priority), body)
        } else {
            (None, body)
        };
        let fragment_len = body.len().checked_sub(padding).ok_or_else(malformed)?;
        self.pending = Some(PendingBlock {
            stream: header.stream,
            end_stream: header.flags & FLAG_END_STREAM != 0,
            priority,
            fragment: body[..fragment_len].to_vec(),
            raw: Vec::new(),
        });
        Ok(())
    }

    fn continue_block(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<(), RewriteError> {
        let pending = match &mut self.pending {
            Some(pending) if pending.stream == header.stream => pending,
            _ => return Err(RewriteError::UnexpectedContinuation(header.stream)),
        };
        if pending.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(RewriteError::HeaderBlockTooLarge);
        }
        pending.fragment.extend_from_slice(payload);
        Ok(())
    }

    /// Decodes the collected block and fixes `:authority`: emits it re-encoded as HEADERS
    /// (+ CONTINUATION), or, if the connection's first block needs no fix, as it came, and lets
    /// the rest of the connection pass.
    fn finish_block(&mut self, output: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(block) = self.pending.take() else {
            return Ok(());
        };
        let mut headers = decode_bounded(&mut self.decoder, &block.fragment)?;
        let fixed = fix_authority(&mut headers);
        if !fixed && !self.rewriting {
            output.extend_from_slice(&block.raw);
            self.phase = Phase::Passthrough;
            return Ok(());
        }
        self.rewriting = true;
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(name, value)| (&name[..], &value[..])));
        write_header_frames(&block, &encoded, output);
        Ok(())
    }
}

/// Makes `:authority` a valid authority: a URL's `host:port`, or nothing. Returns whether it
/// had to change anything.
fn fix_authority(headers: &mut HeaderList) -> bool {
    let mut fixed = false;
    headers.retain_mut(|(name, value)| {
        if name.as_slice() != b":authority" || http::uri::Authority::try_from(&value[..]).is_ok() {
            return true;
        }
        fixed = true;
        let from_url = http::Uri::try_from(&value[..])
            .ok()
            .and_then(|uri| uri.authority().map(|a| a.as_str().as_bytes().to_vec()));
        match from_url {
            Some(authority) => {
                *value = authority;
                true
            }
            None => false,
        }
    });
    fixed
}

fn write_header_frames(block: &PendingBlock, encoded: &[u8], output: &mut Vec<u8>) {
    let priority_len = block.priority.map_or(0, |_| PRIORITY_LEN);
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let headers = FrameHeader {
        length: priority_len + first.len(),
        frame_type: FRAME_HEADERS,
        flags,
        stream: block.stream,
    };
    headers.write(output);
    if let Some(priority) = &block.priority {
        output.extend_from_slice(priority);
    }
    output.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, remaining) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let continuation = FrameHeader {
            length: chunk.len(),
            frame_type: FRAME_CONTINUATION,
            flags: if remaining.is_empty() {
                FLAG_END_HEADERS
            } else {
                0
            },
            stream: block.stream,
        };
        continuation.write(output);
        output.extend_from_slice(chunk);
        rest = remaining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn request(authority: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHeader {
            length: payload.len(),
            frame_type,
            flags,
            stream,
        }
        .write(&mut out);
        out.extend_from_slice(payload);
        out
    }

    fn encode(encoder: &mut loona_hpack::Encoder<'static>, headers: &Headers) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Feeds `bytes` one at a time (the worst split the network can make).
    fn rewrite_bytewise(bytes: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let mut rewriter = Rewriter::default();
        let (mut input, mut output) = (Vec::new(), Vec::new());
        for &byte in bytes {
            input.push(byte);
            rewriter.feed(&mut input, &mut output)?;
        }
        Ok(output)
    }

    /// Splits the server's bytes into frames: (header, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let header = FrameHeader::parse(bytes);
            let end = FRAME_HEADER_LEN + header.length;
            frames.push((header, bytes[FRAME_HEADER_LEN..end].to_vec()));
            bytes = &bytes[end..];
        }
        frames
    }

    fn authority_of(headers: &Headers) -> Option<String> {
        headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_and_the_rest_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let data = frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x02hi");
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut client, &request("http://127.0.0.1:2379")),
        ));
        wire.extend(&data);
        // The client's second request reuses its dynamic table: decoded with the client's context.
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            3,
            &encode(&mut client, &request("http://127.0.0.1:2379")),
        ));
        let out = rewrite_bytewise(&wire).expect("rewrite");
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let frames = frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 4);
        let mut server = loona_hpack::Decoder::new();
        for (index, stream) in [(1, 1), (3, 3)] {
            let (header, payload) = &frames[index];
            assert_eq!((header.frame_type, header.stream), (FRAME_HEADERS, stream));
            let decoded = server.decode(payload).expect("server decodes");
            assert_eq!(authority_of(&decoded).as_deref(), Some("127.0.0.1:2379"));
            let mut expected = request("127.0.0.1:2379");
            expected.sort();
            let mut decoded = decoded;
            decoded.sort();
            assert_eq!(decoded, expected);
        }
        assert_eq!(
            frames[2].1,
            data[FRAME_HEADER_LEN..],
            "DATA passes byte for byte"
        );
    }

    #[test]
    fn a_connection_that_opens_with_a_valid_authority_passes_byte_for_byte() {
        let mut client = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1, 3] {
            wire.extend(frame(
                FRAME_HEADERS,
                FLAG_END_HEADERS,
                stream,
                &encode(&mut client, &request("127.0.0.1:2379")),
            ));
            wire.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        let mut rewriter = Rewriter::default();
        let mut output = Vec::new();
        rewriter
            .feed(&mut wire.clone(), &mut output)
            .expect("rewrite");
        assert_eq!(output, wire);
        assert!(rewriter.passing_through());
        assert_eq!(rewrite_bytewise(&wire).expect("bytewise"), wire);
    }

    #[test]
    fn padding_priority_and_continuations_are_reassembled() {
        let mut client = loona_hpack::Encoder::new();
        let block = encode(&mut client, &request("https://node1:2379"));
        let (head, tail) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 5, 200]); // exclusive dependency on stream 5, weight 200
        payload.extend(head);
        payload.extend([0, 0, 0]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            7,
            &payload,
        ));
        wire.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 7, tail));
        let out = rewrite_bytewise(&wire).expect("rewrite");
        let frames = frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 1);
        let (header, payload) = &frames[0];
        assert_eq!(
            header.flags,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS
        );
        assert_eq!(payload[..PRIORITY_LEN], [0x80, 0, 0, 5, 200]);
        let decoded = loona_hpack::Decoder::new()
            .decode(&payload[PRIORITY_LEN..])
            .expect("server decodes");
        assert_eq!(authority_of(&decoded).as_deref(), Some("node1:2379"));
    }

    #[test]
    fn valid_authorities_stay_and_unusable_ones_go() {
        let mut headers = request("127.0.0.1:2379");
        fix_authority(&mut headers);
        assert_eq!(authority_of(&headers).as_deref(), Some("127.0.0.1:2379"));
        let mut headers = request("#initially=[http://a:1]");
        fix_authority(&mut headers);
        assert_eq!(authority_of(&headers), None);
        assert_eq!(headers.len(), 5);
    }

    #[test]
    fn a_large_header_block_is_split_into_continuations() {
        let mut headers = request("http://127.0.0.1:2379");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut loona_hpack::Encoder::new(), &headers),
        ));
        let mut rewriter = Rewriter::default();
        let mut output = Vec::new();
        rewriter.feed(&mut wire, &mut output).expect("rewrite");
        let frames = frames(&output[PREFACE.len()..]);
        let types: Vec<u8> = frames.iter().map(|(h, _)| h.frame_type).collect();
        assert_eq!(
            types,
            [FRAME_HEADERS, FRAME_CONTINUATION, FRAME_CONTINUATION]
        );
        assert!(frames.iter().all(|(h, _)| h.length <= MAX_FRAME_PAYLOAD));
        assert_eq!(frames[2].0.flags, FLAG_END_HEADERS);
        let block: Vec<u8> = frames.iter().flat_map(|(_, p)| p.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&block).expect("decode");
        assert_eq!(authority_of(&decoded).as_deref(), Some("127.0.0.1:2379"));
    }

    /// An HPACK block that adds one `size`-byte entry to the dynamic table and then names it
    /// `references` times (an encoder indexes the first and refers to it after).
    fn hpack_bomb(size: usize, references: usize) -> Vec<u8> {
        let value = vec![b'a'; size];
        let field = (&b"x-bomb"[..], &value[..]);
        loona_hpack::Encoder::new().encode(std::iter::repeat_n(field, references + 1))
    }

    #[test]
    fn an_hpack_bomb_is_refused_once_the_decoded_list_passes_the_bound() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &hpack_bomb(4000, 16_000),
        ));
        let mut rewriter = Rewriter::default();
        let error = rewriter
            .feed(&mut wire, &mut Vec::new())
            .expect_err("a 64 MB header list");
        assert!(matches!(error, RewriteError::HeaderListTooLarge), "{error}");
        // Just under the bound is decoded.
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &hpack_bomb(4000, 15),
        ));
        Rewriter::default()
            .feed(&mut wire, &mut Vec::new())
            .expect("16 fields of 4 KB");
    }

    #[test]
    fn a_dynamic_table_larger_than_advertised_is_refused() {
        let mut wire = PREFACE.to_vec();
        // A dynamic table size update to 1 MiB, then an indexed :method GET.
        let block = [0x3f, 0xe1, 0xff, 0x3f, 0x82];
        wire.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        let error = rewrite_bytewise(&wire).expect_err("a 1 MiB table");
        assert!(
            format!("{error}").contains("InvalidMaxDynamicSize"),
            "{error}"
        );
        let mut wire = PREFACE.to_vec();
        let block = [0x3f, 0xe1, 0x1f, 0x82]; // an update to exactly 4096
        wire.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block));
        rewrite_bytewise(&wire).expect("a 4096-byte table");
    }

    #[test]
    fn not_http2_passes_untouched() {
        let wire = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n";
        assert_eq!(rewrite_bytewise(wire).expect("passthrough"), wire);
    }

    #[test]
    fn broken_header_blocks_close_the_connection_with_a_reason() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        ));
        let error = rewrite_bytewise(&wire).expect_err("bad HPACK");
        assert!(matches!(error, RewriteError::Hpack(_)), "{error}");

        let mut wire = PREFACE.to_vec();
        wire.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        wire.extend(frame(0x0, 0, 1, b"data"));
        let error = rewrite_bytewise(&wire).expect_err("interleaved");
        assert!(
            matches!(error, RewriteError::ContinuationExpected { .. }),
            "{error}"
        );

        let mut wire = PREFACE.to_vec();
        wire.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]));
        let error = rewrite_bytewise(&wire).expect_err("orphan continuation");
        assert!(
            matches!(error, RewriteError::UnexpectedContinuation(1)),
            "{error}"
        );

        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        let error = rewrite_bytewise(&wire).expect_err("padding longer than frame");
        assert!(
            matches!(error, RewriteError::MalformedHeaders(2)),
            "{error}"
        );
    }
}
