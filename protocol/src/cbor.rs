//! Small `minicbor` writers used by the codecs: one that fills a caller's
//! slice and reports how far it got, and one that compares what would be
//! written with bytes already received, which is how decoders prove an input
//! canonical without a second buffer.

use minicbor::encode::Write;

/// Writes into a borrowed slice, failing when it is full.
pub(crate) struct SliceWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

/// The output slice is too small.
#[derive(Debug)]
pub(crate) struct Full;

impl<'b> SliceWriter<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        SliceWriter { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}

impl Write for SliceWriter<'_> {
    type Error = Full;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.pos.checked_add(bytes.len()).ok_or(Full)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(Full)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

/// Checks that the bytes written equal `expected`, in order.
pub(crate) struct CompareWriter<'b> {
    expected: &'b [u8],
    pos: usize,
}

/// The written bytes differ from the expected ones; the writer's position
/// is then the first offset that differs.
#[derive(Debug)]
pub(crate) struct Mismatch;

impl<'b> CompareWriter<'b> {
    pub(crate) fn new(expected: &'b [u8]) -> Self {
        CompareWriter { expected, pos: 0 }
    }

    /// Whether everything expected was written.
    pub(crate) fn finished(&self) -> bool {
        self.pos == self.expected.len()
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}

impl Write for CompareWriter<'_> {
    type Error = Mismatch;

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Mismatch> {
        let end = self.pos.saturating_add(bytes.len());
        match self.expected.get(self.pos..end) {
            Some(want) if want == bytes => {
                self.pos = end;
                Ok(())
            }
            Some(want) => {
                self.pos += want.iter().zip(bytes).take_while(|(a, b)| a == b).count();
                Err(Mismatch)
            }
            None => {
                let rest = self.expected.get(self.pos..).unwrap_or_default();
                self.pos += rest.iter().zip(bytes).take_while(|(a, b)| a == b).count();
                Err(Mismatch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_writer_stops_at_the_end() {
        let mut buf = [0u8; 3];
        let mut w = SliceWriter::new(&mut buf);
        w.write_all(&[1, 2]).unwrap();
        assert!(w.write_all(&[3, 4]).is_err());
        assert_eq!(w.position(), 2);
        w.write_all(&[3]).unwrap();
        assert_eq!(buf, [1, 2, 3]);
    }

    #[test]
    fn compare_writer_reports_first_difference() {
        let mut w = CompareWriter::new(&[1, 2, 3, 4]);
        w.write_all(&[1, 2]).unwrap();
        assert!(!w.finished());
        assert!(w.write_all(&[3, 9]).is_err());
        assert_eq!(w.position(), 3);
        let mut w = CompareWriter::new(&[1]);
        assert!(w.write_all(&[1, 2]).is_err());
        let mut w = CompareWriter::new(&[1]);
        w.write_all(&[1]).unwrap();
        assert!(w.finished());
        assert_eq!(w.position(), 1);
    }
}
