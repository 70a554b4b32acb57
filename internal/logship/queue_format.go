package logship

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// A queue segment is a file of frames, one a record, appended and never
// rewritten. A frame is
//
//	'R' 'Q' 1 0          magic and format version (resynchronisation point)
//	uint32 LE            payload length
//	uint32 LE            CRC-32C of the 8 bytes above and the payload
//	payload              the record, in the compact binary form below
//
// The payload (format 1) is: uvarint Seq; a byte n and n bytes of
// time.Time binary form (Timestamp); a flags byte (1 Stderr, 2 System);
// varint ID; then Device, Service, Container and Message, each a uvarint
// length and the bytes.
//
// Within a segment the records' Seqs follow one another (n, n+1, …), and a
// segment is named after the Seq its first record has or would have had,
// as 20 decimal digits and ".seg".
const (
	queueFrameHeader = 12
	// queueMaxPayload bounds a frame: anything longer is corruption. A
	// record's message is at most reeve.MaxLogLineBytes.
	queueMaxPayload = 1 << 20
	// queueMarkEvery is how far apart (in bytes) the in-memory index of a
	// segment remembers where a record starts, so that a read seeks to
	// within this distance of where it begins.
	queueMarkEvery = 32 << 10
	queueSegSuffix = ".seg"
)

var (
	queueMagic    = [4]byte{'R', 'Q', 1, 0}
	queueCRCTable = crc32.MakeTable(crc32.Castagnoli)
)

// errQueueFrame is a frame that is torn, corrupt or out of sequence.
var errQueueFrame = errors.New("bad frame")

func queueSegName(first uint64) string {
	return fmt.Sprintf("%020d%s", first, queueSegSuffix)
}

// queueParseSegName returns the first Seq of a segment file's name.
func queueParseSegName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, queueSegSuffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}

// queueRecordSize is an upper bound of the payload of r with message msg.
func queueRecordSize(r *Record, msg string) int {
	return 64 + len(r.Device) + len(r.Service) + len(r.Container) + len(msg)
}

// queueAppendFrame appends the frame of r, with Seq seq and message msg,
// to dst.
func queueAppendFrame(dst []byte, r *Record, seq uint64, msg string) []byte {
	start := len(dst)
	dst = append(dst, queueMagic[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	p := len(dst)
	dst = binary.AppendUvarint(dst, seq)
	lp := len(dst)
	dst = append(dst, 0)
	var err error
	if dst, err = r.Timestamp.AppendBinary(dst); err != nil {
		// A zone offset time cannot encode: keep the instant.
		dst = dst[:lp+1]
		dst, _ = r.Timestamp.UTC().AppendBinary(dst)
	}
	dst[lp] = byte(len(dst) - lp - 1)
	var flags byte
	if r.Stderr {
		flags |= 1
	}
	if r.System {
		flags |= 2
	}
	dst = append(dst, flags)
	dst = binary.AppendVarint(dst, r.ID)
	for _, s := range [...]string{r.Device, r.Service, r.Container, msg} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(dst)-p))
	crc := crc32.Update(crc32.Checksum(dst[start:start+8], queueCRCTable), queueCRCTable, dst[p:])
	binary.LittleEndian.PutUint32(dst[start+8:], crc)
	return dst
}

// queueCheckHeader checks a frame header and returns its payload length.
func queueCheckHeader(h []byte) (int, bool) {
	if [4]byte(h[:4]) != queueMagic {
		return 0, false
	}
	n := binary.LittleEndian.Uint32(h[4:8])
	if n == 0 || n > queueMaxPayload {
		return 0, false
	}
	return int(n), true
}

func queueCheckCRC(h, payload []byte) bool {
	crc := crc32.Update(crc32.Checksum(h[:8], queueCRCTable), queueCRCTable, payload)
	return crc == binary.LittleEndian.Uint32(h[8:12])
}

// queuePayloadSeq returns the Seq of a payload without decoding the rest.
func queuePayloadSeq(p []byte) (uint64, bool) {
	seq, n := binary.Uvarint(p)
	return seq, n > 0
}

// queueDecode decodes a payload.
func queueDecode(p []byte) (Record, error) {
	var r Record
	d := queueDecoder{b: p}
	r.Seq = d.uvarint()
	if tb := d.bytes(uint64(d.byte())); d.err == nil {
		if err := r.Timestamp.UnmarshalBinary(tb); err != nil {
			return r, errQueueFrame
		}
	}
	flags := d.byte()
	r.Stderr, r.System = flags&1 != 0, flags&2 != 0
	r.ID = d.varint()
	r.Device = string(d.bytes(d.uvarint()))
	r.Service = string(d.bytes(d.uvarint()))
	r.Container = string(d.bytes(d.uvarint()))
	r.Message = string(d.bytes(d.uvarint()))
	if d.err != nil || len(d.b) != 0 || r.Seq == 0 {
		return r, errQueueFrame
	}
	return r, nil
}

type queueDecoder struct {
	b   []byte
	err error
}

func (d *queueDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errQueueFrame
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *queueDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errQueueFrame
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *queueDecoder) byte() byte {
	b := d.bytes(1)
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func (d *queueDecoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errQueueFrame
		return nil
	}
	b := d.b[:n]
	d.b = d.b[n:]
	return b
}

// queueFrameReader reads the frames of a segment from one offset up to
// another.
type queueFrameReader struct {
	r       *bufio.Reader
	off     int64 // of the next frame
	end     int64
	header  [queueFrameHeader]byte
	payload []byte
}

func newQueueFrameReader(f *os.File, off, end int64, bufSize int) *queueFrameReader {
	return &queueFrameReader{
		r:   bufio.NewReaderSize(io.NewSectionReader(f, off, end-off), bufSize),
		off: off,
		end: end,
	}
}

// next returns the payload of the next frame (valid until the next call)
// and its offset; io.EOF at a clean end; errQueueFrame (wrapped with why)
// at a torn or corrupt frame.
func (fr *queueFrameReader) next() ([]byte, int64, error) {
	off := fr.off
	if off >= fr.end {
		return nil, off, io.EOF
	}
	if _, err := io.ReadFull(fr.r, fr.header[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, off, fmt.Errorf("%w: torn header", errQueueFrame)
		}
		return nil, off, err
	}
	n, ok := queueCheckHeader(fr.header[:])
	if !ok {
		return nil, off, fmt.Errorf("%w: bad header", errQueueFrame)
	}
	if cap(fr.payload) < n {
		fr.payload = make([]byte, n)
	}
	fr.payload = fr.payload[:n]
	if _, err := io.ReadFull(fr.r, fr.payload); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, off, fmt.Errorf("%w: torn record", errQueueFrame)
		}
		return nil, off, err
	}
	if !queueCheckCRC(fr.header[:], fr.payload) {
		return nil, off, fmt.Errorf("%w: checksum mismatch", errQueueFrame)
	}
	fr.off += int64(queueFrameHeader + n)
	return fr.payload, off, nil
}

// queueMark says where in a segment the record with a Seq starts.
type queueMark struct {
	seq uint64
	off int64
}

// queueScan is what a scan of a segment found.
type queueScan struct {
	lo, hi  uint64 // Seqs of the readable records; lo 0: none
	loTime  time.Time
	hiTime  time.Time
	readEnd int64 // the end of the readable part
	size    int64 // of the file
	marks   []queueMark
	// bad: the readable part ends before the file does, at readEnd,
	// because of why.
	bad bool
	why string
	// beyond is the highest Seq of an intact record found past the bad
	// spot (0: none, the bad part is a torn tail), and beyondTime its
	// timestamp.
	beyond     uint64
	beyondTime time.Time
}

// queueScanSegment reads a segment whole. Records must have Seqs above
// minSeq, each one more than the one before; each readable one is passed
// to fn in order. Only I/O errors are errors: damage is in the result.
func queueScanSegment(path string, minSeq uint64, fn func(*Record)) (queueScan, error) {
	var s queueScan
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return s, err
	}
	s.size = fi.Size()
	fr := newQueueFrameReader(f, 0, s.size, 64<<10)
	lastMark := int64(-queueMarkEvery)
	for {
		p, off, err := fr.next()
		if err == io.EOF {
			s.readEnd = off
			return s, nil
		}
		if err == nil {
			var r Record
			if r, err = queueDecode(p); err != nil {
				err = fmt.Errorf("%w: undecodable record", errQueueFrame)
			} else if s.lo == 0 && r.Seq <= minSeq || s.lo != 0 && r.Seq != s.hi+1 {
				err = fmt.Errorf("%w: record %d out of sequence", errQueueFrame, r.Seq)
			} else {
				if s.lo == 0 {
					s.lo, s.loTime = r.Seq, r.Timestamp
				}
				s.hi, s.hiTime = r.Seq, r.Timestamp
				if off-lastMark >= queueMarkEvery {
					s.marks = append(s.marks, queueMark{seq: r.Seq, off: off})
					lastMark = off
				}
				fn(&r)
				continue
			}
		}
		if !errors.Is(err, errQueueFrame) {
			s.readEnd = off
			return s, err
		}
		s.bad, s.why, s.readEnd = true, strings.TrimPrefix(err.Error(), errQueueFrame.Error()+": "), off
		s.beyond, s.beyondTime, err = queueResync(f, off+1, s.size, max(s.hi, minSeq))
		return s, err
	}
}

// queueResync looks through f from off to end for intact frames with Seqs
// above minSeq and returns the highest Seq among them.
func queueResync(f *os.File, off, end int64, minSeq uint64) (uint64, time.Time, error) {
	var (
		best     uint64
		bestTime time.Time
		window   = make([]byte, 64<<10)
		header   [queueFrameHeader]byte
		payload  []byte
	)
	for off+queueFrameHeader <= end {
		n, err := f.ReadAt(window[:min(int64(len(window)), end-off)], off)
		if err != nil && err != io.EOF {
			return best, bestTime, err
		}
		i := bytes.Index(window[:n], queueMagic[:])
		if i < 0 {
			// The magic may straddle the window's end.
			off += int64(max(n-len(queueMagic)+1, 1))
			continue
		}
		at := off + int64(i)
		off = at + 1
		if _, err := f.ReadAt(header[:], at); err != nil {
			continue
		}
		plen, ok := queueCheckHeader(header[:])
		if !ok || at+queueFrameHeader+int64(plen) > end {
			continue
		}
		if cap(payload) < plen {
			payload = make([]byte, plen)
		}
		payload = payload[:plen]
		if _, err := f.ReadAt(payload, at+queueFrameHeader); err != nil && err != io.EOF {
			return best, bestTime, err
		}
		if !queueCheckCRC(header[:], payload) {
			continue
		}
		r, err := queueDecode(payload)
		if err != nil || r.Seq <= minSeq {
			continue
		}
		if r.Seq > best {
			best, bestTime = r.Seq, r.Timestamp
		}
		off = at + queueFrameHeader + int64(plen)
	}
	return best, bestTime, nil
}
