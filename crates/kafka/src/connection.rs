//! Kafka connections: frames in, one request at a time, answers out in order.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::handlers::{self, Request};
use crate::{versions, KafkaFrontEnd};

/// Why a connection was closed: logged with the peer's address.
#[derive(Debug)]
pub struct Closed(pub String);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn closed(why: impl Into<String>) -> Closed {
    Closed(why.into())
}

/// Accepts Kafka connections on `listener` until the task is dropped; each connection runs on its
/// own task, so a bad one harms no other.
pub async fn serve(listener: TcpListener, front: Arc<KafkaFrontEnd>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "Kafka listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        tokio::spawn(async move {
            if let Err(why) = serve_connection(&front, stream).await {
                tracing::warn!(%peer, reason = %why, "closed a Kafka connection");
            }
        });
    }
}

/// One connection: read a frame, answer it, repeat. Kafka brokers do the same (they read the
/// next request only once the previous one is answered), which is what keeps a producer's
/// pipelined batches to one partition in order.
pub async fn serve_connection<S>(front: &KafkaFrontEnd, stream: S) -> Result<(), Closed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    loop {
        let Some(frame) = read_frame(&mut rd, front.settings.max_frame_bytes).await? else {
            return Ok(());
        };
        if let Some(answer) = answer(front, frame).await? {
            wr.write_all(&answer).await.map_err(|e| closed(format!("writing an answer: {e}")))?;
        }
    }
}

/// The next frame's payload, `None` at a clean end of stream. A frame announcing a negative size
/// or more than `cap` bytes is refused before anything is allocated for it.
pub async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, cap: usize) -> Result<Option<Bytes>, Closed> {
    let mut size = [0u8; 4];
    match rd.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(closed(format!("reading a frame size: {e}"))),
    }
    let size = i32::from_be_bytes(size);
    if size < 0 || size as usize > cap {
        return Err(closed(format!("frame of {size} bytes: frames are 0 to {cap} bytes")));
    }
    let mut buf = BytesMut::zeroed(size as usize);
    rd.read_exact(&mut buf).await.map_err(|e| closed(format!("frame of {size} bytes ended early: {e}")))?;
    Ok(Some(buf.freeze()))
}

/// A request frame, parsed: what it asks, and how to answer it.
pub enum Parsed {
    Request {
        api: ApiKey,
        version: i16,
        header: RequestHeader,
        request: Box<Request>,
    },
    /// An ApiVersions of a version this node does not know: answered with UNSUPPORTED_VERSION
    /// in v0 framing (its header and body parse in every version), so the client retries with a
    /// version from the list it carries.
    UnknownApiVersions {
        correlation_id: i32,
    },
}

/// Parses one request frame without acting on it; the error says why the connection must close.
/// Never panics, whatever the bytes.
pub fn parse(mut frame: Bytes) -> Result<Parsed, Closed> {
    if frame.len() < 8 {
        return Err(closed(format!("request of {} bytes is shorter than any request header", frame.len())));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| closed(format!("unknown API key {key}")))?;
    if !versions::supported(api, version) {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::UnknownApiVersions { correlation_id });
        }
        let range = versions::range(api).map_or("none".to_string(), |(lo, hi)| format!("{lo} to {hi}"));
        return Err(closed(format!("{api:?} version {version} is not supported (this node answers {range})")));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| closed(format!("{api:?} v{version}: malformed request header: {e}")))?;
    let request = handlers::decode_request(api, version, &mut frame)?;
    if frame.has_remaining() {
        tracing::debug!(api = ?api, version, left = frame.remaining(), "request frame had bytes past its body");
    }
    Ok(Parsed::Request { api, version, header, request: Box::new(request) })
}

/// The answer to one request frame (size-prefixed, ready to write), `None` for a request that
/// gets none (a produce with acks=0), or why the connection must close.
pub async fn answer(front: &KafkaFrontEnd, frame: Bytes) -> Result<Option<Bytes>, Closed> {
    match parse(frame)? {
        Parsed::UnknownApiVersions { correlation_id } => {
            let mut body = handlers::api_versions();
            body.error_code = ResponseError::UnsupportedVersion.code();
            encode(ApiKey::ApiVersions, 0, correlation_id, &body).map(Some)
        }
        Parsed::Request { api, version, header, request } => {
            match handlers::dispatch(front, version, &header, *request).await {
                Some(body) => body.encode_answer(api, version, header.correlation_id).map(Some),
                None => Ok(None),
            }
        }
    }
}

/// A response body of any API, encoded after its header.
pub trait Answer: Send {
    fn encode_answer(&self, api: ApiKey, version: i16, correlation_id: i32) -> Result<Bytes, Closed>;
}

impl<T: Encodable + Send> Answer for T {
    fn encode_answer(&self, api: ApiKey, version: i16, correlation_id: i32) -> Result<Bytes, Closed> {
        encode(api, version, correlation_id, self)
    }
}

/// Size prefix, response header, body.
pub fn encode<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> Result<Bytes, Closed> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(version).map(|b| h + b))
        .map_err(|e| closed(format!("{api:?} v{version}: answer does not encode: {e}")))?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(size as i32);
    header
        .encode(&mut out, header_version)
        .and_then(|_| body.encode(&mut out, version))
        .map_err(|e| closed(format!("{api:?} v{version}: answer does not encode: {e}")))?;
    Ok(out.freeze())
}
