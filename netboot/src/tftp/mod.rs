//! The read-only TFTP server that hands a booting machine its bootloader (iPXE, shim, GRUB) and
//! the few small files it reads before it moves to HTTP.
//!
//! What it speaks:
//!
//! - RFC 1350 read requests (RRQ) in `octet` mode; the mode name is matched in any case.
//!   `netascii` is refused with error 0 (boot files are binary, and converting line ends would
//!   change the published bytes). Write requests get error 2, "read-only server".
//! - RFC 2347 option negotiation. Only the options accepted are acknowledged (OACK); unknown
//!   ones, repeated ones and ones with a value out of range are ignored. When nothing is
//!   accepted, DATA 1 is sent at once; otherwise the server waits for ACK 0 first. An ERROR
//!   from the client in answer to the OACK (the "ask for `tsize`, then abort and ask again"
//!   habit of many firmwares) ends the transfer quietly.
//! - RFC 2348 `blksize`: 8 to 65464, granted up to [`Config::max_blksize`]. A client that does
//!   not ask gets 512-byte blocks.
//! - RFC 2349 `tsize` (answered with the file's real size, except that it is not
//!   acknowledged for an empty file, because curl rejects an OACK saying 0) and `timeout`
//!   (1 to 255 seconds, replacing [`Config::initial_timeout`]).
//! - RFC 7440 `windowsize`, granted up to [`Config::max_window`].
//! - Files of any length: block numbers are 64-bit inside and the 16-bit field on the wire
//!   wraps from 65535 to 0.
//!
//! How a transfer runs. The listening socket only parses requests. Each accepted request gets
//! its own task and its own socket (its transfer ID), bound to the listening socket's address
//! with an ephemeral port; a packet arriving there from anyone but the requesting `ip:port` is
//! answered with error 5 and otherwise ignored. Blocks go out a window at a time (go-back-N):
//! an ACK for a block in flight slides the window and sends the blocks that now fit. An ACK
//! for a block already acknowledged does nothing, so duplicated ACKs never cause duplicated
//! DATA (the Sorcerer's Apprentice bug). Only a timeout sends the unacknowledged window again,
//! and each further timeout doubles the wait, up to 4 s; after [`Config::max_retries`]
//! retransmissions without progress, or once [`Config::transfer_deadline`] has passed, the
//! transfer is abandoned. A boot-sized file (up to 8 MiB) is read whole once and shared by
//! every transfer of it (`cache.rs`: lock-step speed is the time from an ACK to the next DATA,
//! and a file read there is a trip to tokio's blocking pool); a larger one is read through a
//! 64 KiB buffer as the window moves.
//!
//! Limits, so that one machine (a looping firmware, a flood of requests it never
//! acknowledges) cannot keep the others from their bootloader:
//!
//! - at most [`Config::max_transfers`] transfers at once (256), and at most
//!   [`Config::max_per_source`] (16) to one source address; a request beyond either gets
//!   error 0 ("server busy" or "too many transfers to this address"), and every other
//!   address is still served;
//! - a client that stops acknowledging loses its transfer once the retries run out: with the
//!   defaults (1 s first timeout, 5 retries, waits of 1, 2, 4, 4, 4 and 4 s) 19 s after its
//!   last acknowledgement; a `timeout` option above [`MAX_TIMEOUT_OPTION`] (10 s) is
//!   declined, so a client cannot stretch that to minutes;
//! - no transfer lasts more than [`Config::transfer_deadline`] (120 s) in all;
//! - a second RRQ from an `ip:port` whose transfer is still running is ignored.
//!
//! Names go through [`crate::fsroot::Root::open`]; a refused name gets error 1 (missing file,
//! folder, empty name) or error 2 (anything that tries to leave the root or breaks the naming
//! rules), with the reason's text. Refusals are sent from the listening socket. Malformed
//! requests (see [`parse_request`]) are logged and dropped without an answer.
//!
//! Not done: single-port mode, rate limits (of packets, as opposed to transfers), clearing
//! the IP DF bit, and choosing
//! the reply address when the listening socket is bound to a wildcard address (the transfer
//! socket then binds the wildcard too and the kernel picks the source address).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, trace, warn};

use crate::fsroot::{self, PathError};
use crate::hub::{Hub, Metrics, Stage};

mod cache;

/// TFTP settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The largest block size granted (RFC 2348); 1468 fits a 1500-byte MTU.
    pub max_blksize: u16,
    /// The largest window granted (RFC 7440).
    pub max_window: u16,
    /// Transfers served at once; further requests get an error packet.
    pub max_transfers: usize,
    /// Transfers served at once to one source address; further requests from it get an
    /// error packet, while other addresses are still served.
    pub max_per_source: usize,
    /// The first retransmission timeout (a client's `timeout` option overrides it).
    pub initial_timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub max_retries: u32,
    /// The longest a transfer may take in all.
    pub transfer_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_blksize: 1468,
            max_window: 16,
            max_transfers: 256,
            max_per_source: 16,
            initial_timeout: Duration::from_secs(1),
            max_retries: 5,
            transfer_deadline: Duration::from_secs(120),
        }
    }
}

/// The most options a request may carry; a request with more is malformed.
pub const MAX_OPTIONS: usize = 16;
/// The longest option name or value, in bytes; a request with a longer one is malformed.
pub const MAX_OPTION_LEN: usize = 255;
/// The block size when the client does not ask for one (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// The smallest block size a client may ask for (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// The largest block size a client may ask for (RFC 2348); larger asks are clamped to it.
pub const MAX_BLKSIZE: u16 = 65464;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Receive buffer of the listening socket: the largest UDP payload, so that an oversized
/// request is seen whole and refused, never truncated into something else.
const REQUEST_BUFFER: usize = 65536;
/// Read buffer of a transfer of a file too large for [`cache::Cache`]: each refill is a trip
/// to the blocking pool, so it is large enough that those trips are rare (one per 44 blocks of
/// 1468 bytes).
const FILE_BUFFER: usize = 64 << 10;
/// Receive buffer of a transfer socket: clients send ACKs (4 bytes) and ERRORs there.
const REPLY_BUFFER: usize = 1024;
/// The longest error message sent, in bytes.
const MAX_ERROR_MESSAGE: usize = 200;
/// The shortest retransmission timeout used, whatever the configuration says.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest wait between two retransmissions.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The longest `timeout` option granted (RFC 2349 allows 255 s); longer asks are declined.
pub const MAX_TIMEOUT_OPTION: Duration = Duration::from_secs(10);

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined; see the message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full or allocation exceeded.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

/// The transfer mode a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text with CR LF line ends (refused by this server).
    Netascii,
}

/// The options of a request that this server understands, with values already checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// RFC 2348 block size, 8 to 65464 (a larger ask is clamped to 65464).
    pub blksize: Option<u16>,
    /// RFC 2349 transfer size the client sent (0 in a read request, asking for the size).
    pub tsize: Option<u64>,
    /// RFC 2349 retransmission timeout, 1 to 255 seconds.
    pub timeout: Option<u8>,
    /// RFC 7440 window size, 1 to 65535 blocks.
    pub windowsize: Option<u16>,
    /// Names of the options left out: unknown, repeated, or with a value out of range
    /// (lossily decoded, for logs).
    pub ignored: Vec<String>,
}

/// A read request, as [`parse_request`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name, exactly as sent (not yet checked against the root's rules).
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// The options understood.
    pub options: Options,
}

/// Why a packet sent to the server's port is not a read request the server can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than an opcode.
    #[error("packet too short")]
    TooShort,
    /// A write request (this server is read-only).
    #[error("write request on a read-only server")]
    WriteRequest,
    /// DATA, ACK, ERROR or OACK, which belong on a transfer's port.
    #[error("opcode {0} is not a request")]
    NotARequest(u16),
    /// Not a TFTP opcode.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// The file name, the mode or an option is not terminated by a NUL byte.
    #[error("a field is not NUL-terminated")]
    Unterminated,
    /// The file name is not UTF-8.
    #[error("file name is not UTF-8")]
    NameNotUtf8,
    /// A mode other than `octet` or `netascii` (the text is cut to 32 bytes).
    #[error("unknown transfer mode {0:?}")]
    BadMode(String),
    /// An option name with nothing after it.
    #[error("option {0:?} has no value")]
    MissingValue(String),
    /// More than [`MAX_OPTIONS`] options.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// An option name or value longer than [`MAX_OPTION_LEN`] bytes.
    #[error("option name or value longer than {MAX_OPTION_LEN} bytes")]
    OptionTooLong,
}

impl PacketError {
    /// The error packet the sender gets: well-formed requests that are refused are answered,
    /// malformed packets are not (`None`).
    pub fn reply(&self) -> Option<(ErrorCode, &'static str)> {
        match self {
            PacketError::WriteRequest => Some((ErrorCode::AccessViolation, "read-only server")),
            PacketError::NameNotUtf8 => Some((ErrorCode::FileNotFound, "file name is not UTF-8")),
            PacketError::BadMode(_) => Some((ErrorCode::IllegalOperation, "unknown transfer mode")),
            PacketError::TooShort
            | PacketError::NotARequest(_)
            | PacketError::UnknownOpcode(_)
            | PacketError::Unterminated
            | PacketError::MissingValue(_)
            | PacketError::TooManyOptions
            | PacketError::OptionTooLong => None,
        }
    }
}

/// Parses a packet received on the server's port into a read request. Pure, total and
/// bounded: it never panics and does no IO, whatever the bytes (it is the fuzzing target).
///
/// The layout is `01 | filename NUL | mode NUL | (name NUL value NUL)*`. Every field must end
/// with a NUL. Zero bytes after the last field are accepted as padding (some boot ROMs pad
/// their requests). At most [`MAX_OPTIONS`] options, each name and value at most
/// [`MAX_OPTION_LEN`] bytes. Option names are matched in any case; values must be decimal.
/// A write request is reported as [`PacketError::WriteRequest`] without looking further.
pub fn parse_request(packet: &[u8]) -> Result<Request, PacketError> {
    let [hi, lo, body @ ..] = packet else {
        return Err(PacketError::TooShort);
    };
    match u16::from_be_bytes([*hi, *lo]) {
        OP_RRQ => {}
        OP_WRQ => return Err(PacketError::WriteRequest),
        op @ (OP_DATA | OP_ACK | OP_ERROR | OP_OACK) => return Err(PacketError::NotARequest(op)),
        op => return Err(PacketError::UnknownOpcode(op)),
    }
    let mut rest = body;
    let name = take_field(&mut rest)?;
    let mode = take_field(&mut rest)?;
    let filename = std::str::from_utf8(name)
        .map_err(|_| PacketError::NameNotUtf8)?
        .to_string();
    let mode = if mode.eq_ignore_ascii_case(b"octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case(b"netascii") {
        Mode::Netascii
    } else {
        return Err(PacketError::BadMode(lossy(&mode[..mode.len().min(32)])));
    };
    let mut options = Options::default();
    let mut count = 0;
    while rest.iter().any(|&b| b != 0) {
        if count == MAX_OPTIONS {
            return Err(PacketError::TooManyOptions);
        }
        let name = take_field(&mut rest)?;
        if name.len() > MAX_OPTION_LEN {
            return Err(PacketError::OptionTooLong);
        }
        if rest.is_empty() {
            return Err(PacketError::MissingValue(lossy(name)));
        }
        let value = take_field(&mut rest)?;
        if value.len() > MAX_OPTION_LEN {
            return Err(PacketError::OptionTooLong);
        }
        options.take(name, value);
        count += 1;
    }
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// Splits the next NUL-terminated field off `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], PacketError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(PacketError::Unterminated)?;
    let field = &rest[..end];
    *rest = &rest[end + 1..];
    Ok(field)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A plain decimal number (no sign, no spaces, at most 20 digits).
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Options {
    /// Records one option: the first valid occurrence of a known name wins.
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let v = decimal(value);
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let taken = if is("blksize") && self.blksize.is_none() {
            self.blksize = v
                .filter(|&v| v >= u64::from(MIN_BLKSIZE))
                .map(|v| v.min(u64::from(MAX_BLKSIZE)) as u16);
            self.blksize.is_some()
        } else if is("tsize") && self.tsize.is_none() {
            self.tsize = v;
            self.tsize.is_some()
        } else if is("timeout") && self.timeout.is_none() {
            self.timeout = v.and_then(|v| u8::try_from(v).ok()).filter(|&v| v >= 1);
            self.timeout.is_some()
        } else if is("windowsize") && self.windowsize.is_none() {
            self.windowsize = v.and_then(|v| u16::try_from(v).ok()).filter(|&v| v >= 1);
            self.windowsize.is_some()
        } else {
            false
        };
        if !taken {
            self.ignored.push(lossy(name));
        }
    }
}

/// What a transfer runs with, after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Negotiated {
    blksize: u16,
    window: u16,
    timeout: Duration,
    /// The options to acknowledge, in order; empty means no OACK.
    oack: Vec<(&'static str, String)>,
}

/// Grants what the client asked for within the configured limits; `size` answers `tsize`.
fn negotiate(opts: &Options, cfg: &Config, size: u64) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        window: 1,
        timeout: cfg.initial_timeout.max(MIN_TIMEOUT),
        oack: Vec::new(),
    };
    if let Some(b) = opts.blksize {
        n.blksize = b.min(cfg.max_blksize).clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        n.oack.push(("blksize", n.blksize.to_string()));
    }
    // An empty file's size is left out: curl (7.88 at least) rejects `tsize` 0 in an OACK.
    if opts.tsize.is_some() && size > 0 {
        n.oack.push(("tsize", size.to_string()));
    }
    // A longer timeout than MAX_TIMEOUT_OPTION is declined (not acknowledged): a client that
    // stops answering would otherwise hold a transfer for minutes.
    if let Some(t) = opts
        .timeout
        .filter(|t| u64::from(*t) <= MAX_TIMEOUT_OPTION.as_secs())
    {
        n.timeout = Duration::from_secs(u64::from(t));
        n.oack.push(("timeout", t.to_string()));
    }
    if let Some(w) = opts.windowsize {
        n.window = w.min(cfg.max_window).max(1);
        n.oack.push(("windowsize", n.window.to_string()));
    }
    n
}

/// The wait after `retries` retransmissions: `base`, doubled each time, but never more than
/// [`MAX_BACKOFF`] (or `base` itself, when a client asked for a longer timeout).
fn backoff(base: Duration, retries: u32) -> Duration {
    base.saturating_mul(1 << retries.min(16))
        .min(MAX_BACKOFF.max(base))
}

/// An ERROR packet; the message is cut to [`MAX_ERROR_MESSAGE`] bytes and loses any NUL.
fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut cut = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(5 + cut);
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend(message.as_bytes()[..cut].iter().filter(|&&b| b != 0));
    p.push(0);
    p
}

/// An OACK packet carrying `options`.
fn oack_packet(options: &[(&str, String)]) -> Vec<u8> {
    let mut p = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    }
    p
}

/// A packet a client sent to a transfer's port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// ACK of a block (its 16-bit wire number).
    Ack(u16),
    /// The client gives up.
    Error { code: u16, message: String },
    /// Anything else (ignored).
    Other,
}

fn parse_reply(packet: &[u8]) -> Reply {
    match packet {
        [0, 4, a, b, ..] => Reply::Ack(u16::from_be_bytes([*a, *b])),
        [0, 5, a, b, msg @ ..] => {
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            Reply::Error {
                code: u16::from_be_bytes([*a, *b]),
                message: lossy(&msg[..end.min(MAX_ERROR_MESSAGE)]),
            }
        }
        _ => Reply::Other,
    }
}

/// The 16-bit block number carried on the wire for 64-bit block `index` (65535 wraps to 0).
fn wire(index: u64) -> u16 {
    (index & 0xffff) as u16
}

/// Which blocks are in flight. Block indexes start at 1 and never wrap; blocks
/// `acked + 1 ..= sent` have been sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    size: u64,
    acked: u64,
    sent: u64,
    /// The final block's index, once it has been read (a block shorter than the block size).
    last: Option<u64>,
}

/// What an ACK did to the [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckOutcome {
    /// It acknowledged this many more blocks.
    Advanced(u64),
    /// It acknowledged the final block.
    Done,
    /// It repeats the latest acknowledgement.
    Duplicate,
    /// It names no block in flight (an old ACK, or nonsense).
    Stray,
}

impl Window {
    fn new(size: u16) -> Window {
        Window {
            size: u64::from(size.max(1)),
            acked: 0,
            sent: 0,
            last: None,
        }
    }

    /// The next block to send, if the window has room and the file has more.
    fn next(&self) -> Option<u64> {
        (self.last.is_none() && self.sent - self.acked < self.size).then_some(self.sent + 1)
    }

    /// Notes that `index` (from [`Window::next`]) was sent; `last` if it is the final block.
    fn sent(&mut self, index: u64, last: bool) {
        debug_assert_eq!(index, self.sent + 1);
        self.sent = index;
        if last {
            self.last = Some(index);
        }
    }

    /// Applies an ACK carrying wire number `block`. Blocks in flight span at most 65535
    /// indexes, so exactly one of them can carry a given wire number.
    fn ack(&mut self, block: u16) -> AckOutcome {
        let ahead = u64::from(block.wrapping_sub(wire(self.acked)));
        if ahead == 0 {
            return AckOutcome::Duplicate;
        }
        if ahead > self.sent - self.acked {
            return AckOutcome::Stray;
        }
        self.acked += ahead;
        if self.last == Some(self.acked) {
            AckOutcome::Done
        } else {
            AckOutcome::Advanced(ahead)
        }
    }
}

/// Why a transfer stopped early.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("no answer after {0} retransmissions")]
    NoAnswer(u32),
    #[error("client sent error {code}: {message:?}")]
    Client { code: u16, message: String },
    #[error("reading the file failed: {0}")]
    Read(#[source] io::Error),
    #[error("network error: {0}")]
    Net(#[source] io::Error),
}

/// How a transfer ended without error.
enum Outcome {
    /// The final block was acknowledged.
    Complete { bytes: u64, blocks: u64 },
    /// The client answered the OACK with an error (typically after reading `tsize`).
    Declined { code: u16, message: String },
}

/// Receive errors that do not mean the socket is broken.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
    )
}

/// The answer for a name [`fsroot::Root::open`] refused.
fn path_error_code(e: &PathError) -> ErrorCode {
    match e {
        PathError::NotFound | PathError::Empty | PathError::NotAFile => ErrorCode::FileNotFound,
        _ => ErrorCode::AccessViolation,
    }
}

/// What the listening loop and the transfers share.
struct Server {
    socket: UdpSocket,
    local_ip: IpAddr,
    root: Arc<fsroot::Root>,
    cfg: Config,
    hub: Arc<Hub>,
    /// Peers with a transfer running.
    live: Mutex<HashSet<SocketAddr>>,
    /// Small files, read once.
    cache: cache::Cache,
}

/// A peer's place in [`Server::live`], given back when the transfer ends however it ends.
struct Slot {
    server: Arc<Server>,
    peer: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.live().remove(&self.peer);
    }
}

/// Serves read requests arriving on `socket` from files under `root` (canonical), until the
/// socket fails. See the module doc for the protocol.
pub async fn serve(
    socket: tokio::net::UdpSocket,
    root: Arc<fsroot::Root>,
    cfg: Config,
    hub: Arc<Hub>,
) -> std::io::Result<()> {
    let local = socket.local_addr()?;
    info!(%local, root = %root.path().display(), "TFTP server listening");
    let server = Arc::new(Server {
        socket,
        local_ip: local.ip(),
        root,
        cfg,
        hub,
        live: Mutex::new(HashSet::new()),
        cache: cache::Cache::default(),
    });
    let mut buf = vec![0u8; REQUEST_BUFFER];
    loop {
        let (n, peer) = match server.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) if transient(&e) => {
                debug!(error = %e, "TFTP receive error ignored");
                continue;
            }
            Err(e) => return Err(e),
        };
        server.on_packet(&buf[..n], peer).await;
    }
}

impl Server {
    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send_error(&self, to: SocketAddr, code: ErrorCode, message: &str) {
        if let Err(e) = self.socket.send_to(&error_packet(code, message), to).await {
            debug!(peer = %to, error = %e, "TFTP error packet not sent");
        }
    }

    /// Refuses a request: a warning, the error counter, and an error packet.
    async fn refuse(&self, peer: SocketAddr, file: &str, code: ErrorCode, reason: &str) {
        warn!(%peer, file = ?file, code = code as u16, reason, "TFTP request refused");
        Metrics::inc(&self.hub.metrics.tftp_errors);
        self.send_error(peer, code, reason).await;
    }

    /// Handles one packet sent to the server's port.
    async fn on_packet(self: &Arc<Self>, packet: &[u8], peer: SocketAddr) {
        let is_request = matches!(packet, [0, 1 | 2, ..]);
        if is_request {
            Metrics::inc(&self.hub.metrics.tftp_requests);
        }
        let req = match parse_request(packet) {
            Ok(req) => req,
            Err(e) => {
                match e.reply() {
                    Some((code, message)) => {
                        warn!(%peer, reason = %e, "TFTP request refused");
                        Metrics::inc(&self.hub.metrics.tftp_errors);
                        self.send_error(peer, code, message).await;
                    }
                    None if is_request => {
                        warn!(%peer, reason = %e, "malformed TFTP request dropped");
                        Metrics::inc(&self.hub.metrics.tftp_errors);
                    }
                    None => debug!(%peer, reason = %e, "TFTP packet dropped"),
                }
                return;
            }
        };
        if req.mode == Mode::Netascii {
            let why = "netascii mode is not supported; use octet";
            self.refuse(peer, &req.filename, ErrorCode::NotDefined, why)
                .await;
            return;
        }
        let slot = {
            let mut live = self.live();
            if live.contains(&peer) {
                debug!(%peer, file = ?req.filename, "duplicate TFTP request ignored");
                return;
            }
            let from_source = live.iter().filter(|p| p.ip() == peer.ip()).count();
            if live.len() >= self.cfg.max_transfers {
                Err("server busy, try again")
            } else if from_source >= self.cfg.max_per_source {
                Err("too many transfers to this address at once, try again")
            } else {
                live.insert(peer);
                Ok(Slot {
                    server: Arc::clone(self),
                    peer,
                })
            }
        };
        match slot {
            Ok(slot) => {
                tokio::spawn(transfer(Arc::clone(self), req, peer, slot));
            }
            Err(why) => {
                self.refuse(peer, &req.filename, ErrorCode::NotDefined, why)
                    .await;
            }
        }
    }
}

/// Runs one accepted request to its end; `_slot` is held until then.
async fn transfer(server: Arc<Server>, req: Request, peer: SocketAddr, _slot: Slot) {
    let name = req.filename;
    // Opened, and a small file read whole (from the cache or into it), off the async threads.
    let opened = {
        let (server, name) = (Arc::clone(&server), name.clone());
        tokio::task::spawn_blocking(move || {
            let mut o = server.root.open(&name)?;
            let cached = server.cache.get(&mut o.file, o.size).map_err(|e| {
                warn!(file = ?name, error = %e, "TFTP file cannot be read");
                PathError::Unreadable
            })?;
            Ok::<_, PathError>((o, cached))
        })
        .await
    };
    let (source, size) = match opened {
        Ok(Ok((o, Some(data)))) => (Source::Memory(io::Cursor::new(data)), o.size),
        Ok(Ok((o, None))) => {
            let file = tokio::fs::File::from_std(o.file);
            (
                Source::File(BufReader::with_capacity(FILE_BUFFER, file)),
                o.size,
            )
        }
        Ok(Err(e)) => {
            server
                .refuse(peer, &name, path_error_code(&e), &e.to_string())
                .await;
            return;
        }
        Err(e) => {
            error!(%peer, file = ?name, error = %e, "TFTP name lookup failed");
            Metrics::inc(&server.hub.metrics.tftp_errors);
            return;
        }
    };
    let socket = match UdpSocket::bind((server.local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            error!(%peer, error = %e, "TFTP transfer socket cannot be bound");
            Metrics::inc(&server.hub.metrics.tftp_errors);
            let why = "server cannot start the transfer";
            server.send_error(peer, ErrorCode::NotDefined, why).await;
            return;
        }
    };
    let neg = negotiate(&req.options, &server.cfg, size);
    info!(
        %peer,
        file = ?name,
        size,
        blksize = neg.blksize,
        window = neg.window,
        options = ?neg.oack,
        ignored = ?req.options.ignored,
        "TFTP transfer started"
    );
    let started = Instant::now();
    let mut t = Transfer {
        socket,
        peer,
        cfg: &server.cfg,
        metrics: &server.hub.metrics,
        buf: vec![0; REPLY_BUFFER],
        retransmits: 0,
    };
    let result = tokio::time::timeout(server.cfg.transfer_deadline, t.run(source, &neg)).await;
    let duration = started.elapsed();
    let retransmits = t.retransmits;
    match result {
        Ok(Ok(Outcome::Complete { bytes, blocks })) => {
            info!(
                %peer,
                file = ?name,
                bytes,
                blocks,
                blksize = neg.blksize,
                window = neg.window,
                retransmits,
                ?duration,
                "TFTP transfer finished"
            );
            Metrics::inc(&server.hub.metrics.tftp_transfers);
            if let Some(mac) = server.hub.mac_for_ip(peer.ip()) {
                server.hub.stage(&mac, None, Stage::Bootloader, &name);
            }
        }
        Ok(Ok(Outcome::Declined { code, message })) => {
            let what = "TFTP client ended the transfer after the OACK";
            debug!(%peer, file = ?name, code, ?message, "{what}");
        }
        Ok(Err(e @ TransferError::Client { .. })) => {
            let what = "TFTP transfer aborted by the client";
            warn!(%peer, file = ?name, error = %e, retransmits, ?duration, "{what}");
            Metrics::inc(&server.hub.metrics.tftp_errors);
        }
        Ok(Err(e)) => {
            let what = "TFTP transfer abandoned";
            error!(%peer, file = ?name, error = %e, retransmits, ?duration, "{what}");
            Metrics::inc(&server.hub.metrics.tftp_errors);
            let why = match e {
                TransferError::Read(_) => Some("read error"),
                TransferError::NoAnswer(_) => Some("transfer timed out"),
                TransferError::Client { .. } | TransferError::Net(_) => None,
            };
            if let Some(why) = why {
                t.send_error(ErrorCode::NotDefined, why).await;
            }
        }
        Err(_) => {
            let deadline = server.cfg.transfer_deadline;
            let what = "TFTP transfer abandoned: it took too long";
            error!(%peer, file = ?name, ?deadline, retransmits, "{what}");
            Metrics::inc(&server.hub.metrics.tftp_errors);
            t.send_error(ErrorCode::NotDefined, "transfer took too long")
                .await;
        }
    }
}

/// Where a transfer's blocks come from: memory (a file of at most [`cache::FILE_MAX`]
/// bytes, shared through [`cache::Cache`]), or the file through a [`FILE_BUFFER`]-byte buffer.
enum Source {
    Memory(io::Cursor<Arc<[u8]>>),
    File(BufReader<tokio::fs::File>),
}

impl AsyncRead for Source {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Source::Memory(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            Source::File(f) => std::pin::Pin::new(f).poll_read(cx, buf),
        }
    }
}

/// One transfer's socket and counters.
struct Transfer<'a> {
    socket: UdpSocket,
    peer: SocketAddr,
    cfg: &'a Config,
    metrics: &'a Metrics,
    buf: Vec<u8>,
    retransmits: u64,
}

impl Transfer<'_> {
    async fn send(&self, packet: &[u8]) -> Result<(), TransferError> {
        self.socket
            .send_to(packet, self.peer)
            .await
            .map(drop)
            .map_err(TransferError::Net)
    }

    async fn send_error(&self, code: ErrorCode, message: &str) {
        let _ = self.send(&error_packet(code, message)).await;
    }

    /// The next packet from the peer, or `None` once `deadline` passes. Packets from anyone
    /// else get error 5 (unless they are errors themselves) and are otherwise ignored.
    async fn next_reply(&mut self, deadline: Instant) -> Result<Option<Reply>, TransferError> {
        loop {
            let (n, from) = match timeout_at(deadline, self.socket.recv_from(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(x)) => x,
                Ok(Err(e)) if transient(&e) => continue,
                Ok(Err(e)) => return Err(TransferError::Net(e)),
            };
            if from == self.peer {
                return Ok(Some(parse_reply(&self.buf[..n])));
            }
            debug!(%from, peer = %self.peer, "TFTP packet from an unknown transfer ID");
            if !matches!(self.buf[..n], [0, 5, ..]) {
                let packet = error_packet(ErrorCode::UnknownTid, "unknown transfer ID");
                let _ = self.socket.send_to(&packet, from).await;
            }
        }
    }

    /// After a timeout: the transfer's end once it has been retried enough, or else the
    /// wait after the next resend (the count of retries goes up by one).
    fn give_up_or_wait(
        &self,
        retries: &mut u32,
        base: Duration,
    ) -> Result<Duration, TransferError> {
        if *retries >= self.cfg.max_retries {
            return Err(TransferError::NoAnswer(*retries));
        }
        *retries += 1;
        Ok(backoff(base, *retries))
    }

    /// Negotiates, then sends the file from `file`.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        file: R,
        neg: &Negotiated,
    ) -> Result<Outcome, TransferError> {
        let base = neg.timeout;
        if !neg.oack.is_empty() {
            let oack = oack_packet(&neg.oack);
            self.send(&oack).await?;
            let mut retries = 0;
            let mut deadline = Instant::now() + base;
            loop {
                match self.next_reply(deadline).await? {
                    None => {
                        let wait = self.give_up_or_wait(&mut retries, base)?;
                        self.send(&oack).await?;
                        deadline = Instant::now() + wait;
                    }
                    Some(Reply::Ack(0)) => break,
                    Some(Reply::Error { code, message }) => {
                        return Ok(Outcome::Declined { code, message });
                    }
                    Some(other) => {
                        trace!(peer = %self.peer, ?other, "ignored while waiting for ACK 0")
                    }
                }
            }
        }

        let mut flight = Flight {
            win: Window::new(neg.window),
            packets: VecDeque::new(),
            spare: Vec::new(),
            file,
            blksize: usize::from(neg.blksize),
            bytes: 0,
        };
        self.fill(&mut flight).await?;
        let mut retries = 0;
        let mut deadline = Instant::now() + base;
        loop {
            match self.next_reply(deadline).await? {
                None => {
                    let wait = self.give_up_or_wait(&mut retries, base)?;
                    // Counted first, so that whoever sees the packet sees the count.
                    let n = flight.packets.len() as u64;
                    self.retransmits += n;
                    Metrics::add(&self.metrics.tftp_retransmits, n);
                    for packet in &flight.packets {
                        self.send(packet).await?;
                    }
                    let from = flight.win.acked + 1;
                    debug!(peer = %self.peer, from, blocks = n, retries, "TFTP window sent again");
                    deadline = Instant::now() + wait;
                }
                Some(Reply::Ack(block)) => match flight.win.ack(block) {
                    AckOutcome::Done => {
                        return Ok(Outcome::Complete {
                            bytes: flight.bytes,
                            blocks: flight.win.acked,
                        });
                    }
                    AckOutcome::Advanced(k) => {
                        for _ in 0..k {
                            let done = flight.packets.pop_front();
                            flight.spare.extend(done);
                        }
                        retries = 0;
                        self.fill(&mut flight).await?;
                        deadline = Instant::now() + base;
                    }
                    // Never answered: resending on a repeated ACK is the Sorcerer's Apprentice
                    // bug. Nor does it postpone the retransmission timer.
                    AckOutcome::Duplicate | AckOutcome::Stray => {
                        trace!(peer = %self.peer, block, "TFTP ACK ignored");
                    }
                },
                Some(Reply::Error { code, message }) => {
                    return Err(TransferError::Client { code, message });
                }
                Some(Reply::Other) => trace!(peer = %self.peer, "TFTP packet ignored"),
            }
        }
    }

    /// Reads and sends blocks while the window has room.
    async fn fill<R: AsyncRead + Unpin>(&self, f: &mut Flight<R>) -> Result<(), TransferError> {
        while let Some(index) = f.win.next() {
            let mut packet = f.spare.pop().unwrap_or_default();
            let n = read_block(&mut f.file, &mut packet, wire(index), f.blksize)
                .await
                .map_err(TransferError::Read)?;
            f.win.sent(index, n < f.blksize);
            self.send(&packet).await?;
            f.bytes += n as u64;
            Metrics::add(&self.metrics.tftp_bytes, n as u64);
            f.packets.push_back(packet);
        }
        Ok(())
    }
}

/// The sending side of a transfer's data phase.
struct Flight<R> {
    win: Window,
    /// DATA packets of blocks `win.acked + 1 ..= win.sent`, oldest first.
    packets: VecDeque<Vec<u8>>,
    /// Acknowledged packets, to reuse.
    spare: Vec<Vec<u8>>,
    file: R,
    blksize: usize,
    /// Payload bytes sent (first transmissions).
    bytes: u64,
}

/// Fills `packet` with a DATA packet for `block`: up to `blksize` bytes read from `file`
/// (fewer only at the end of the file). Returns the payload length.
async fn read_block<R: AsyncRead + Unpin>(
    file: &mut R,
    packet: &mut Vec<u8>,
    block: u16,
    blksize: usize,
) -> io::Result<usize> {
    packet.clear();
    packet.extend_from_slice(&OP_DATA.to_be_bytes());
    packet.extend_from_slice(&block.to_be_bytes());
    packet.resize(4 + blksize, 0);
    let mut filled = 0;
    while filled < blksize {
        match file.read(&mut packet[4 + filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    packet.truncate(4 + filled);
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read request from `|`-separated fields, each NUL-terminated.
    fn rrq(fields: &str) -> Vec<u8> {
        let mut p = vec![0, 1];
        for f in fields.split('|') {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn a_read_request_with_options_parses() {
        let p =
            rrq("ipxe/snponly.efi|OcTeT|BLKSIZE|1468|tsize|0|timeout|3|windowsize|8|multicast|");
        let r = parse_request(&p).unwrap();
        assert_eq!(r.filename, "ipxe/snponly.efi");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            Options {
                blksize: Some(1468),
                tsize: Some(0),
                timeout: Some(3),
                windowsize: Some(8),
                ignored: vec!["multicast".to_string()],
            }
        );
        let plain = parse_request(&rrq("a|netascii")).unwrap();
        assert_eq!(plain.mode, Mode::Netascii);
        assert_eq!(plain.options, Options::default());
    }

    #[test]
    fn option_values_out_of_range_or_repeated_are_ignored() {
        let p = rrq(&[
            "f|octet|blksize|7|blksize|99999|timeout|0|timeout|256",
            "windowsize|0|windowsize|65536|tsize|-1|tsize|",
        ]
        .join("|"));
        let o = parse_request(&p).unwrap().options;
        assert_eq!(o.blksize, Some(MAX_BLKSIZE), "the second blksize, clamped");
        assert_eq!((o.timeout, o.windowsize, o.tsize), (None, None, None));
        assert_eq!(o.ignored.len(), 7, "{:?}", o.ignored);
        let p = rrq("f|octet|blksize|512|blksize|1024");
        assert_eq!(parse_request(&p).unwrap().options.blksize, Some(512));
    }

    #[test]
    fn missing_nuls_are_malformed() {
        assert_eq!(parse_request(b"\0\x01file"), Err(PacketError::Unterminated));
        assert_eq!(
            parse_request(b"\0\x01file\0octet"),
            Err(PacketError::Unterminated)
        );
        assert_eq!(
            parse_request(b"\0\x01file\0octet\0blksize\x00512"),
            Err(PacketError::Unterminated)
        );
        assert_eq!(
            parse_request(b"\0\x01file\0octet\0blksize\0"),
            Err(PacketError::MissingValue("blksize".to_string()))
        );
        // Zero padding after the last field is fine.
        let r = parse_request(b"\0\x01file\0octet\0blksize\x00512\0\0\0\0").unwrap();
        assert_eq!(r.options.blksize, Some(512));
    }

    #[test]
    fn options_are_bounded() {
        let full = format!("f|octet{}", "|x|1".repeat(MAX_OPTIONS));
        assert!(parse_request(&rrq(&full)).is_ok());
        assert_eq!(
            parse_request(&rrq(&format!("{full}|y|2"))),
            Err(PacketError::TooManyOptions)
        );
        let long = "a".repeat(MAX_OPTION_LEN + 1);
        assert_eq!(
            parse_request(&rrq(&format!("f|octet|{long}|1"))),
            Err(PacketError::OptionTooLong)
        );
        assert_eq!(
            parse_request(&rrq(&format!("f|octet|blksize|{long}"))),
            Err(PacketError::OptionTooLong)
        );
    }

    #[test]
    fn other_packets_are_not_requests() {
        let e = parse_request(&[0, 2, b'f', 0, b'o', 0]).unwrap_err();
        assert_eq!(e, PacketError::WriteRequest);
        assert_eq!(
            e.reply(),
            Some((ErrorCode::AccessViolation, "read-only server"))
        );
        assert_eq!(parse_request(&[]), Err(PacketError::TooShort));
        assert_eq!(parse_request(&[1]), Err(PacketError::TooShort));
        assert_eq!(
            parse_request(&[0, 4, 0, 1]),
            Err(PacketError::NotARequest(4))
        );
        assert_eq!(parse_request(&[0, 9]), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(
            parse_request(b"\0\x01f\0mail\0"),
            Err(PacketError::BadMode("mail".to_string()))
        );
        // A NUL inside the name ends it: what follows is taken as the mode, and refused.
        let e = parse_request(b"\0\x01ok\0/../../etc/passwd\0octet\0").unwrap_err();
        assert!(matches!(e, PacketError::BadMode(_)), "{e:?}");
        assert_eq!(e.reply().map(|r| r.0), Some(ErrorCode::IllegalOperation));
        assert_eq!(
            parse_request(b"\0\x01\xff\xfe\0octet\0"),
            Err(PacketError::NameNotUtf8)
        );
        assert_eq!(PacketError::Unterminated.reply(), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            // Mostly small bytes, so that NULs and valid opcodes are common.
            let mut p: Vec<u8> = (0..len).map(|_| (next() % 6) as u8 * 20).collect();
            if len > 2 && next() % 2 == 0 {
                p[0] = 0;
                p[1] = 1;
            }
            let _ = parse_request(&p);
            let _ = parse_reply(&p);
        }
    }

    #[test]
    fn negotiation_clamps_to_the_config() {
        let cfg = Config::default();
        let opts = Options {
            blksize: Some(65464),
            tsize: Some(0),
            timeout: Some(5),
            windowsize: Some(64),
            ignored: vec![],
        };
        let n = negotiate(&opts, &cfg, 12345);
        assert_eq!((n.blksize, n.window), (1468, 16));
        assert_eq!(n.timeout, Duration::from_secs(5));
        let oack: Vec<(&str, &str)> = n.oack.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            oack,
            [
                ("blksize", "1468"),
                ("tsize", "12345"),
                ("timeout", "5"),
                ("windowsize", "16")
            ]
        );
        let empty = negotiate(&opts, &cfg, 0);
        assert!(!empty.oack.iter().any(|(k, _)| *k == "tsize"));
        let none = negotiate(&Options::default(), &cfg, 1);
        assert_eq!((none.blksize, none.window), (512, 1));
        assert_eq!(none.timeout, cfg.initial_timeout);
        assert!(none.oack.is_empty());
        let tiny = Config {
            max_blksize: 4,
            ..Config::default()
        };
        let b = Options {
            blksize: Some(512),
            ..Options::default()
        };
        assert_eq!(negotiate(&b, &tiny, 0).blksize, MIN_BLKSIZE);
    }

    #[test]
    fn packets_are_built_exactly() {
        assert_eq!(
            error_packet(ErrorCode::UnknownTid, "unknown transfer ID"),
            b"\0\x05\0\x05unknown transfer ID\0"
        );
        assert_eq!(
            error_packet(ErrorCode::NotDefined, "a\0b"),
            b"\0\x05\0\0ab\0"
        );
        let long = "é".repeat(300);
        let p = error_packet(ErrorCode::NotDefined, &long);
        assert_eq!(p.len(), 4 + MAX_ERROR_MESSAGE + 1);
        assert!(std::str::from_utf8(&p[4..p.len() - 1]).is_ok());
        let oack = oack_packet(&[("blksize", "1468".into()), ("tsize", "0".into())]);
        assert_eq!(oack, b"\0\x06blksize\x001468\0tsize\x000\0");
        assert_eq!(parse_reply(&[0, 4, 0xff, 0xff]), Reply::Ack(65535));
        assert_eq!(
            parse_reply(b"\0\x05\0\x08no\0"),
            Reply::Error {
                code: 8,
                message: "no".into()
            }
        );
        assert_eq!(parse_reply(&[0, 4, 1]), Reply::Other);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (0..=5).map(|r| backoff(s, r).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 4, 4, 4]);
        assert_eq!(
            waits.iter().sum::<u64>(),
            19,
            "an abandoned transfer goes in 19 s"
        );
        assert_eq!(
            backoff(Duration::from_millis(100), 2),
            Duration::from_millis(400)
        );
        assert_eq!(backoff(Duration::from_secs(10), 3), Duration::from_secs(10));
        assert_eq!(backoff(Duration::MAX, 40), Duration::MAX);
    }

    /// Sends what the window allows; `size` bytes in `blksize` blocks.
    fn send_all(w: &mut Window, size: u64, blksize: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(i) = w.next() {
            let last = i == size / blksize + 1;
            w.sent(i, last);
            out.push(i);
        }
        out
    }

    #[test]
    fn the_window_slides_and_ignores_repeated_acks() {
        let mut w = Window::new(4);
        assert_eq!(send_all(&mut w, 10 * 512, 512), [1, 2, 3, 4]);
        assert_eq!(w.ack(0), AckOutcome::Duplicate);
        assert_eq!(w.ack(2), AckOutcome::Advanced(2));
        assert_eq!(send_all(&mut w, 10 * 512, 512), [5, 6]);
        assert_eq!(w.ack(2), AckOutcome::Duplicate);
        assert_eq!(w.ack(1), AckOutcome::Stray, "older than the window");
        assert_eq!(w.ack(7), AckOutcome::Stray, "not sent yet");
        assert_eq!(w.ack(6), AckOutcome::Advanced(4));
        assert_eq!(send_all(&mut w, 10 * 512, 512), [7, 8, 9, 10]);
        assert_eq!(w.ack(10), AckOutcome::Advanced(4));
        // 10 full blocks: the 11th is the empty final one.
        assert_eq!(send_all(&mut w, 10 * 512, 512), [11]);
        assert_eq!(w.next(), None);
        assert_eq!(w.ack(11), AckOutcome::Done);
    }

    #[test]
    fn block_numbers_roll_over() {
        assert_eq!(wire(65535), 65535);
        assert_eq!(wire(65536), 0);
        assert_eq!(wire(65537), 1);
        // Exactly 65536 full blocks: the final (empty) block is 65537, wire number 1.
        let blocks = 65536;
        let mut w = Window::new(8);
        w.acked = 65532;
        w.sent = 65532;
        assert_eq!(
            send_all(&mut w, blocks * 8, 8),
            [65533, 65534, 65535, 65536, 65537]
        );
        assert_eq!(w.ack(65535), AckOutcome::Advanced(3));
        assert_eq!(w.ack(65535), AckOutcome::Duplicate);
        assert_eq!(w.ack(0), AckOutcome::Advanced(1));
        assert_eq!(w.acked, 65536);
        assert_eq!(w.ack(0), AckOutcome::Duplicate);
        assert_eq!(w.ack(2), AckOutcome::Stray);
        assert_eq!(w.ack(1), AckOutcome::Done);
        // A window straddling the wrap, acknowledged at once.
        let mut w = Window::new(16);
        w.acked = 65530;
        w.sent = 65530;
        assert_eq!(send_all(&mut w, 1 << 40, 1).len(), 16);
        assert_eq!(w.ack(wire(65546)), AckOutcome::Advanced(16));
        assert_eq!(w.acked, 65546);
        // A window of the largest size still maps every ACK to one block.
        let mut w = Window::new(u16::MAX);
        assert_eq!(send_all(&mut w, 1 << 40, 1).len(), 65535);
        assert_eq!(w.ack(65535), AckOutcome::Advanced(65535));
    }
}
