package mqtt

import (
	"fmt"
)

// plan is how a firmware image is cut: Chunks chunks of ChunkSize bytes,
// the last one shorter.
type plan struct {
	Size      int64
	ChunkSize int
	Chunks    int
}

func newPlan(size int64, chunkSize int) plan {
	return plan{Size: size, ChunkSize: chunkSize, Chunks: int((size + int64(chunkSize) - 1) / int64(chunkSize))}
}

// span is where chunk n lies in the image.
func (p plan) span(n int) (off int64, length int) {
	off = int64(n) * int64(p.ChunkSize)
	return off, int(min(int64(p.ChunkSize), p.Size-off))
}

// acked is how many bytes a device holding chunks 0…next-1 holds.
func (p plan) acked(next int) int64 { return min(int64(next)*int64(p.ChunkSize), p.Size) }

// percent is acked as a share of the image, 0 to 100.
func (p plan) percent(next int) int {
	if p.Size == 0 {
		return 100
	}
	return int(p.acked(next) * 100 / p.Size)
}

// verdict is what the sender makes of an acknowledgement.
type verdict int

const (
	// ackStale is an acknowledgement of something already dealt with
	// (a duplicate, an answer to a command sent again): nothing to do.
	ackStale verdict = iota
	// ackInvalid is an acknowledgement that cannot be (a chunk never
	// sent, another commit, beyond the end): log it, nothing else.
	ackInvalid
	// ackResend: the device stored the current chunk wrong; send it again.
	ackResend
	// ackNext: the device holds chunks 0…Next-1; send chunk Next (or,
	// when Next is the last, the transfer is over).
	ackNext
)

// sender is the gateway's side of one transfer, without I/O: which chunk
// is outstanding, and what each acknowledgement means. The device's word
// ("next") decides where the transfer goes on, so a device that kept the
// chunks of a broken transfer makes it resume, and one that lost them
// makes it go back.
type sender struct {
	plan
	commit  string
	crc     func(n int) uint32 // CRC-32 of chunk n as sent
	started bool               // the device answered the update command
	cur     int                // the chunk outstanding (valid once started)
	sent    int                // 1 + the highest chunk sent so far
}

// sending records that chunk n went out.
func (s *sender) sending(n int) { s.sent = max(s.sent, n+1) }

// done says whether the device holds every chunk.
func (s *sender) done() bool { return s.started && s.cur >= s.Chunks }

// onAck judges an acknowledgement; why says what was wrong for ackInvalid
// and ackResend.
func (s *sender) onAck(a ackMsg) (v verdict, why string) {
	if a.Commit != s.commit {
		return ackInvalid, fmt.Sprintf("acknowledges commit %q, the transfer is of %q", a.Commit, s.commit)
	}
	if a.Next > s.Chunks {
		return ackInvalid, fmt.Sprintf("says it holds %d chunks of %d", a.Next, s.Chunks)
	}
	if a.Chunk == nil { // the answer to the update command
		if s.started {
			return ackStale, "" // the answer to the command sent again
		}
		s.started, s.cur = true, a.Next
		return ackNext, ""
	}
	n := *a.Chunk
	if !s.started || n >= s.sent {
		return ackInvalid, fmt.Sprintf("acknowledges chunk %d, which was never sent", n)
	}
	if n != s.cur {
		return ackStale, "" // a late or repeated acknowledgement
	}
	if a.Next > n { // it says it stored chunk n
		if a.CRC32 == nil {
			return ackInvalid, fmt.Sprintf("acknowledges chunk %d without its crc32", n)
		}
		if want := s.crc(n); *a.CRC32 != want {
			return ackResend, fmt.Sprintf("stored chunk %d with crc32 %08x, sent %08x", n, *a.CRC32, want)
		}
	}
	s.cur = a.Next
	return ackNext, ""
}
