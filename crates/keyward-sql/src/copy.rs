//! Reading PostgreSQL's binary `COPY … TO STDOUT (FORMAT binary)` output, for the one bulk read
//! keyward makes: a replicated cache's load of every session.
//!
//! A million rows through the query protocol cost the client more than the server (a message,
//! a row and seven checked decodes per row); the binary COPY stream is the same values with
//! only a length before each. The format
//! (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format"): an 11-byte
//! signature, a flags word and a header extension, then per tuple a 16-bit field count (−1
//! ends the data) and per field a 32-bit length (−1 for NULL) and the value in the type's
//! binary send format. sqlx delivers the stream as `CopyData` payloads; the reader does not
//! rely on how the server cuts them (one per row today).

/// The signature every binary COPY stream starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The stream is not what `COPY … (FORMAT binary)` sends.
#[derive(Debug, thiserror::Error)]
#[error("malformed binary COPY data: {0}")]
pub(crate) struct CopyError(&'static str);

impl From<CopyError> for keyward_core::StoreError {
    fn from(e: CopyError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// The most fields a tuple may have (a session row has seven).
const MAX_FIELDS: usize = 16;

/// A tuple's fields as slices of the stream (`None` for NULL).
pub(crate) type Fields<'a> = [Option<&'a [u8]>];

/// Tuples out of a binary COPY stream, fed chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct BinaryCopy {
    /// The start of a tuple (or the header) that the last chunk cut off.
    carry: Vec<u8>,
    header_read: bool,
    ended: bool,
}

/// What the front of a buffer holds.
enum Step {
    /// This many bytes were used.
    Used(usize),
    /// More bytes are needed.
    Short,
}

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl BinaryCopy {
    /// Feed the next chunk; `tuple` is called with each complete tuple's fields, in order.
    pub(crate) fn feed<E: From<CopyError>>(
        &mut self,
        chunk: &[u8],
        tuple: &mut dyn FnMut(&Fields<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.carry.is_empty() {
            let used = self.consume(chunk, tuple)?;
            if let Some(rest) = chunk.get(used..) {
                self.carry.extend_from_slice(rest);
            }
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(chunk);
            let used = self.consume(&buf, tuple)?;
            buf.drain(..used.min(buf.len()));
            self.carry = buf;
        }
        Ok(())
    }

    /// Whether the trailer was read and nothing follows it.
    pub(crate) fn finish(&self) -> Result<(), CopyError> {
        match (self.ended, self.carry.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => Err(CopyError("data after the trailer")),
            (false, _) => Err(CopyError("the stream ended inside the data")),
        }
    }

    /// Read what is complete at the front of `buf`; the number of bytes used.
    fn consume<E: From<CopyError>>(
        &mut self,
        buf: &[u8],
        tuple: &mut dyn FnMut(&Fields<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut at = 0;
        if !self.header_read {
            match Self::header(buf)? {
                Step::Used(n) => {
                    at = n;
                    self.header_read = true;
                }
                Step::Short => return Ok(0),
            }
        }
        while !self.ended {
            let Some(rest) = buf.get(at..) else { break };
            match self.tuple(rest, tuple)? {
                Step::Used(n) => at += n,
                Step::Short => break,
            }
        }
        if self.ended && at < buf.len() {
            return Err(CopyError("data after the trailer").into());
        }
        Ok(at)
    }

    fn header(buf: &[u8]) -> Result<Step, CopyError> {
        let Some(sig) = buf.get(..SIGNATURE.len()) else {
            return Ok(Step::Short);
        };
        if sig != SIGNATURE {
            return Err(CopyError("no PGCOPY signature"));
        }
        let (Some(flags), Some(ext)) = (be_i32(buf, 11), be_i32(buf, 15)) else {
            return Ok(Step::Short);
        };
        // Bit 16 says OIDs are included: never asked for, so never expected.
        if flags & (1 << 16) != 0 {
            return Err(CopyError("OIDs in the data"));
        }
        let ext = usize::try_from(ext).map_err(|_| CopyError("a negative header extension"))?;
        let n = 19 + ext;
        Ok(if buf.len() < n {
            Step::Short
        } else {
            Step::Used(n)
        })
    }

    fn tuple<E: From<CopyError>>(
        &mut self,
        buf: &[u8],
        tuple: &mut dyn FnMut(&Fields<'_>) -> Result<(), E>,
    ) -> Result<Step, E> {
        let Some(count) = be_i16(buf, 0) else {
            return Ok(Step::Short);
        };
        if count == -1 {
            self.ended = true;
            return Ok(Step::Used(2));
        }
        let count = usize::try_from(count).map_err(|_| CopyError("a negative field count"))?;
        let mut at = 2;
        let mut view: [Option<&[u8]>; MAX_FIELDS] = [None; MAX_FIELDS];
        let Some(view) = view.get_mut(..count) else {
            return Err(CopyError("more fields than a session row has").into());
        };
        for field in view.iter_mut() {
            let Some(len) = be_i32(buf, at) else {
                return Ok(Step::Short);
            };
            at += 4;
            if len == -1 {
                continue;
            }
            let len = usize::try_from(len).map_err(|_| CopyError("a negative field length"))?;
            let Some(value) = buf.get(at..at + len) else {
                return Ok(Step::Short);
            };
            *field = Some(value);
            at += len;
        }
        tuple(view)?;
        Ok(Step::Used(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of these tuples as PostgreSQL writes it.
    fn stream(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&3i32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for t in tuples {
            out.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for f in t {
                match f {
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read(chunks: &[&[u8]]) -> Result<Vec<Vec<Option<Vec<u8>>>>, CopyError> {
        let mut copy = BinaryCopy::default();
        let mut seen = vec![];
        for c in chunks {
            copy.feed::<CopyError>(c, &mut |f| {
                seen.push(f.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
                Ok(())
            })?;
        }
        copy.finish()?;
        Ok(seen)
    }

    #[test]
    fn tuples_come_out_however_the_stream_is_cut() {
        let tuples: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"\x01\x02".as_slice()), Some(b"ada"), None, Some(b"")],
            vec![Some(b"x"), None, Some(b"\x00\x00\x00\x00\x00\x00\x00\x07")],
            vec![],
        ];
        let want: Vec<Vec<Option<Vec<u8>>>> = tuples
            .iter()
            .map(|t| t.iter().map(|v| v.map(<[u8]>::to_vec)).collect())
            .collect();
        let all = stream(&tuples);
        assert_eq!(read(&[&all]).unwrap(), want);
        for cut in 0..=all.len() {
            let (a, b) = all.split_at(cut);
            assert_eq!(read(&[a, b]).unwrap(), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(read(&bytes).unwrap(), want);
    }

    #[test]
    fn what_is_not_a_binary_copy_is_refused() {
        let good = stream(&[vec![Some(b"a".as_slice())]]);
        assert!(read(&[b"PGCOPY\n\xff\r\n\x01\0\0\0\0\0\0\0\0"]).is_err());
        assert!(read(&[&good[..good.len() - 1]]).is_err(), "no trailer");
        let mut extra = good.clone();
        extra.push(0);
        assert!(read(&[&extra]).is_err(), "data after the trailer");
        let mut oids = good.clone();
        oids[12] = 1;
        assert!(read(&[&oids]).is_err(), "OIDs");
        let mut negative = good.clone();
        // The first field's length (after the 22-byte header and the count) as -2.
        negative[24..28].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(read(&[&negative]).is_err(), "a negative length");
        let mut wide = good;
        wide[22..24].copy_from_slice(&17i16.to_be_bytes());
        assert!(read(&[&wide]).is_err(), "too many fields");
    }
}
