//! The binary form of a [`Call`], a [`CallResult`] and a [`DeadLetter`], shared by both
//! backends: length-prefixed fields after a version byte, so bodies and header values stay
//! byte-exact and encoding costs one copy; decoding from [`Bytes`] slices the body without
//! copying it. Calls and results both start with id, function and queue, which is all the
//! embedded log's index reads back at start. Decoding checks every length and reports
//! truncation as [`QueueError::Corrupt`].

use bytes::Bytes;

use crate::{Call, CallResult, DeadLetter, Failed, QueueError};

const VERSION: u8 = 1;
const RESULT_VERSION: u8 = 2;
/// Starts a dead letter in the second format (which holds a call or a result).
const DEAD_MAGIC: &[u8; 4] = b"VDL2";

/// Appends fields to a buffer.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
}

/// Reads fields from a buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The buffer as [`Bytes`], so bodies can be sliced out of it instead of copied.
    source: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            source: None,
        }
    }
    /// Read from `b`, sharing its memory for bodies.
    pub(crate) fn over(b: &'a Bytes) -> Self {
        Reader {
            buf: b,
            pos: 0,
            source: Some(b),
        }
    }
    /// Skip `n` bytes.
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), QueueError> {
        self.take(n).map(|_| ())
    }
    /// The bytes of a length-prefixed body, shared with the source when there is one.
    fn body(&mut self) -> Result<Bytes, QueueError> {
        let b = self.bytes()?;
        Ok(match self.source {
            Some(src) if !b.is_empty() => src.slice_ref(b),
            _ => Bytes::copy_from_slice(b),
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], QueueError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| QueueError::Corrupt("record is truncated".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], QueueError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, QueueError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, QueueError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, QueueError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, QueueError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], QueueError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn string(&mut self) -> Result<String, QueueError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| QueueError::Corrupt("text field is not UTF-8".into()))
    }
}

/// Append the binary form of `call` to `out`.
pub(crate) fn put_call(out: &mut Vec<u8>, call: &Call) {
    let mut w = Writer(out);
    w.u8(VERSION);
    w.bytes(call.id.as_bytes());
    w.bytes(call.function.as_bytes());
    w.bytes(call.queue.as_bytes());
    w.bytes(call.method.as_bytes());
    w.bytes(call.path.as_bytes());
    put_headers(&mut w, &call.headers);
    match &call.callback {
        Some(url) => {
            w.u8(1);
            w.bytes(url.as_bytes());
        }
        None => w.u8(0),
    }
    w.u64(call.accepted_ms);
    w.u32(call.attempts);
    w.bytes(&call.body);
}

/// Read a call written by [`put_call`].
pub(crate) fn get_call(r: &mut Reader<'_>) -> Result<Call, QueueError> {
    let version = r.u8()?;
    if version != VERSION {
        return Err(QueueError::Corrupt(format!(
            "unknown call format {version}"
        )));
    }
    let id = r.string()?;
    let function = r.string()?;
    let queue = r.string()?;
    let method = r.string()?;
    let path = r.string()?;
    let headers = get_headers(r)?;
    let callback = match r.u8()? {
        0 => None,
        _ => Some(r.string()?),
    };
    let accepted_ms = r.u64()?;
    let attempts = r.u32()?;
    let body = r.body()?;
    Ok(Call {
        id,
        function,
        queue,
        method,
        path,
        headers,
        body,
        callback,
        accepted_ms,
        attempts,
    })
}

/// The binary form of a call.
pub(crate) fn encode_call(call: &Call) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + call.body.len());
    put_call(&mut out, call);
    out
}

/// Decode [`encode_call`]'s output, sharing `buf`'s memory for the body.
pub(crate) fn decode_call(buf: &Bytes) -> Result<Call, QueueError> {
    get_call(&mut Reader::over(buf))
}

fn put_headers(w: &mut Writer<'_>, headers: &[(String, Vec<u8>)]) {
    w.u32(headers.len() as u32);
    for (k, v) in headers {
        w.bytes(k.as_bytes());
        w.bytes(v);
    }
}

fn get_headers(r: &mut Reader<'_>) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
    let n = r.u32()? as usize;
    let mut headers = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        headers.push((r.string()?, r.bytes()?.to_vec()));
    }
    Ok(headers)
}

/// Append the binary form of a call's result.
pub(crate) fn put_result(out: &mut Vec<u8>, res: &CallResult) {
    let mut w = Writer(out);
    w.u8(RESULT_VERSION);
    w.bytes(res.id.as_bytes());
    w.bytes(res.function.as_bytes());
    w.bytes(res.queue.as_bytes());
    w.bytes(res.method.as_bytes());
    w.bytes(res.path.as_bytes());
    w.bytes(res.callback.as_bytes());
    w.u64(res.accepted_ms);
    w.u32(res.call_attempts);
    w.u16(res.status);
    put_headers(&mut w, &res.headers);
    w.u64(res.start_ms);
    w.u64(res.duration_us);
    w.u64(res.give_up_ms);
    w.u32(res.attempts);
    w.u8(u8::from(res.truncated));
    w.bytes(&res.body);
}

/// Read a result written by [`put_result`].
pub(crate) fn get_result(r: &mut Reader<'_>) -> Result<CallResult, QueueError> {
    let version = r.u8()?;
    if version != RESULT_VERSION {
        return Err(QueueError::Corrupt(format!(
            "unknown result format {version}"
        )));
    }
    Ok(CallResult {
        id: r.string()?,
        function: r.string()?,
        queue: r.string()?,
        method: r.string()?,
        path: r.string()?,
        callback: r.string()?,
        accepted_ms: r.u64()?,
        call_attempts: r.u32()?,
        status: r.u16()?,
        headers: get_headers(r)?,
        start_ms: r.u64()?,
        duration_us: r.u64()?,
        give_up_ms: r.u64()?,
        attempts: r.u32()?,
        truncated: r.u8()? != 0,
        body: r.body()?,
    })
}

/// The binary form of a result.
pub(crate) fn encode_result(res: &CallResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + res.body.len());
    put_result(&mut out, res);
    out
}

/// Decode [`encode_result`]'s output, sharing `buf`'s memory for the body.
pub(crate) fn decode_result(buf: &Bytes) -> Result<CallResult, QueueError> {
    get_result(&mut Reader::over(buf))
}

/// Append the binary form of a dead letter.
pub(crate) fn put_dead(out: &mut Vec<u8>, d: &DeadLetter) {
    out.extend_from_slice(DEAD_MAGIC);
    let mut w = Writer(out);
    w.u16(d.status);
    w.u64(d.failed_ms);
    w.bytes(d.reason.as_bytes());
    match &d.failed {
        Failed::Call(c) => {
            w.u8(0);
            put_call(out, c);
        }
        Failed::Callback(res) => {
            w.u8(1);
            put_result(out, res);
        }
    }
}

/// Read a dead letter written by [`put_dead`] (or by the first format, which held a call).
pub(crate) fn get_dead(r: &mut Reader<'_>) -> Result<DeadLetter, QueueError> {
    let v2 = r.buf.get(..4) == Some(DEAD_MAGIC.as_slice());
    if v2 {
        r.skip(4)?;
    }
    let status = r.u16()?;
    let failed_ms = r.u64()?;
    let reason = r.string()?;
    let kind = if v2 { r.u8()? } else { 0 };
    let failed = match kind {
        0 => Failed::Call(get_call(r)?),
        1 => Failed::Callback(get_result(r)?),
        k => return Err(QueueError::Corrupt(format!("unknown dead letter kind {k}"))),
    };
    Ok(DeadLetter {
        failed,
        reason,
        status,
        failed_ms,
    })
}

/// The binary form of a dead letter.
pub(crate) fn encode_dead(d: &DeadLetter) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + d.body_len());
    put_dead(&mut out, d);
    out
}

/// Decode [`encode_dead`]'s output, sharing `buf`'s memory for the body.
pub(crate) fn decode_dead(buf: &Bytes) -> Result<DeadLetter, QueueError> {
    get_dead(&mut Reader::over(buf))
}

#[cfg(test)]
pub(crate) fn sample_call(id: &str) -> Call {
    Call {
        id: id.to_string(),
        function: "echo".into(),
        queue: "default".into(),
        method: "POST".into(),
        path: "/a?b=1".into(),
        headers: vec![("x-a".into(), vec![0xff, b'1'])],
        body: Bytes::from_static(b"hello\0world"),
        callback: Some("http://127.0.0.1:9/cb".into()),
        accepted_ms: 1_700_000_000_000,
        attempts: 2,
    }
}

#[cfg(test)]
pub(crate) fn sample_result(id: &str) -> CallResult {
    CallResult {
        id: id.to_string(),
        function: "echo".into(),
        queue: "default".into(),
        method: "POST".into(),
        path: "/a?b=1".into(),
        callback: "http://127.0.0.1:9/cb".into(),
        accepted_ms: 1_700_000_000_000,
        call_attempts: 2,
        status: 201,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: Bytes::from_static(b"answer\0"),
        truncated: true,
        start_ms: 1_700_000_000_500,
        duration_us: 1234,
        give_up_ms: 1_700_000_009_000,
        attempts: 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip() {
        let c = sample_call("abc");
        let buf = Bytes::from(encode_call(&c));
        let back = decode_call(&buf).unwrap();
        assert_eq!(back, c);
        // The body is a slice of the record, not a copy.
        let range = buf.as_ptr_range();
        assert!(range.contains(&back.body.as_ptr()));
        let mut no_cb = c.clone();
        no_cb.callback = None;
        assert_eq!(
            decode_call(&Bytes::from(encode_call(&no_cb))).unwrap(),
            no_cb
        );
    }

    #[test]
    fn results_round_trip() {
        let r = sample_result("abc");
        assert_eq!(decode_result(&Bytes::from(encode_result(&r))).unwrap(), r);
    }

    #[test]
    fn dead_letters_round_trip_in_both_formats() {
        for failed in [
            Failed::Call(sample_call("x")),
            Failed::Callback(sample_result("y")),
        ] {
            let d = DeadLetter {
                failed,
                reason: "503 after 3 attempts".into(),
                status: 503,
                failed_ms: 42,
            };
            assert_eq!(decode_dead(&Bytes::from(encode_dead(&d))).unwrap(), d);
        }
        // The first format: status, time, reason, call.
        let mut old = Vec::new();
        let mut w = Writer(&mut old);
        w.u16(502);
        w.u64(7);
        w.bytes(b"old");
        put_call(&mut old, &sample_call("z"));
        let d = decode_dead(&Bytes::from(old)).unwrap();
        assert_eq!((d.status, d.failed_ms, d.reason.as_str()), (502, 7, "old"));
        assert_eq!(d.failed, Failed::Call(sample_call("z")));
    }

    #[test]
    fn truncation_is_reported() {
        let buf = encode_call(&sample_call("abc"));
        for cut in [0, 1, 5, buf.len() - 1] {
            assert!(
                decode_call(&Bytes::copy_from_slice(&buf[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        let buf = encode_result(&sample_result("abc"));
        for cut in [0, 1, 5, buf.len() - 1] {
            assert!(
                decode_result(&Bytes::copy_from_slice(&buf[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }
}
