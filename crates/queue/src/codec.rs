//! The binary form of a [`Call`] and a [`DeadLetter`], shared by both backends: length-prefixed
//! fields after a version byte, so bodies and header values stay byte-exact and encoding costs
//! one copy. Decoding checks every length and reports truncation as [`QueueError::Corrupt`].

use bytes::Bytes;

use crate::{Call, DeadLetter, QueueError};

const VERSION: u8 = 1;

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
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
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
    w.u32(call.headers.len() as u32);
    for (k, v) in &call.headers {
        w.bytes(k.as_bytes());
        w.bytes(v);
    }
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
    let n = r.u32()? as usize;
    let mut headers = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        headers.push((r.string()?, r.bytes()?.to_vec()));
    }
    let callback = match r.u8()? {
        0 => None,
        _ => Some(r.string()?),
    };
    let accepted_ms = r.u64()?;
    let attempts = r.u32()?;
    let body = Bytes::copy_from_slice(r.bytes()?);
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

/// Decode [`encode_call`]'s output.
pub(crate) fn decode_call(buf: &[u8]) -> Result<Call, QueueError> {
    get_call(&mut Reader::new(buf))
}

/// Append the binary form of a dead letter.
pub(crate) fn put_dead(out: &mut Vec<u8>, d: &DeadLetter) {
    let mut w = Writer(out);
    w.u16(d.status);
    w.u64(d.failed_ms);
    w.bytes(d.reason.as_bytes());
    put_call(out, &d.call);
}

/// Read a dead letter written by [`put_dead`].
pub(crate) fn get_dead(r: &mut Reader<'_>) -> Result<DeadLetter, QueueError> {
    let status = r.u16()?;
    let failed_ms = r.u64()?;
    let reason = r.string()?;
    let call = get_call(r)?;
    Ok(DeadLetter {
        call,
        reason,
        status,
        failed_ms,
    })
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
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip() {
        let c = sample_call("abc");
        assert_eq!(decode_call(&encode_call(&c)).unwrap(), c);
        let mut no_cb = c.clone();
        no_cb.callback = None;
        assert_eq!(decode_call(&encode_call(&no_cb)).unwrap(), no_cb);
    }

    #[test]
    fn dead_letters_round_trip() {
        let d = DeadLetter {
            call: sample_call("x"),
            reason: "503 after 3 attempts".into(),
            status: 503,
            failed_ms: 42,
        };
        let mut buf = Vec::new();
        put_dead(&mut buf, &d);
        assert_eq!(get_dead(&mut Reader::new(&buf)).unwrap(), d);
    }

    #[test]
    fn truncation_is_reported() {
        let buf = encode_call(&sample_call("abc"));
        for cut in [0, 1, 5, buf.len() - 1] {
            assert!(decode_call(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }
}
