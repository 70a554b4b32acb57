package mqtt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
)

// Update sends fw to the device in chunks, each acknowledged before the
// next goes, and returns once the device's status shows fw.Commit. See
// docs/mqtt.md for the exchange.
func (d *Driver) Update(ctx context.Context, localID string, fw driver.Firmware, progress driver.Progress) error {
	if progress == nil {
		progress = func(int) {}
	}
	s, err := d.session()
	if err != nil {
		return err
	}
	if _, err := s.reachable(localID); err != nil {
		return err
	}
	img, size, sum, err := openFirmware(fw)
	if err != nil {
		return fmt.Errorf("device %s: firmware %s: %w", localID, fw.Commit, err)
	}
	defer img.Close()

	in, running, err := s.begin(localID)
	if err != nil {
		return err
	}
	defer s.end(localID, in)
	if running == fw.Commit && fw.Commit != "" {
		progress(100)
		return nil
	}
	u := &updater{
		s: s, id: localID, fw: fw, in: in, img: img, progress: progress, shown: -1,
		cmd:  updateCmd{Commit: fw.Commit, Size: size, SHA256: sum},
		crcs: map[int]uint32{},
	}
	u.snd = sender{plan: newPlan(size, s.cfg.chunkSize), commit: fw.Commit, crc: func(n int) uint32 { return u.crcs[n] }}
	u.cmd.ChunkSize, u.cmd.Chunks = u.snd.ChunkSize, u.snd.Chunks
	return u.run(ctx)
}

// openFirmware opens fw's file, checks its size and digest against fw
// and returns its size and sha256 (hex).
func openFirmware(fw driver.Firmware) (*os.File, int64, string, error) {
	if !filepath.IsLocal(fw.File) {
		return nil, 0, "", fmt.Errorf("file %q is not inside the release's assets", fw.File)
	}
	f, err := os.Open(filepath.Join(fw.Dir, fw.File))
	if err != nil {
		return nil, 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		f.Close()
		return nil, 0, "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	switch {
	case fw.Size > 0 && n != fw.Size:
		err = fmt.Errorf("%s is %d bytes, the release says %d", fw.File, n, fw.Size)
	case fw.SHA256 != "" && !strings.EqualFold(fw.SHA256, sum):
		err = fmt.Errorf("%s has sha256 %s, the release says %s", fw.File, sum, fw.SHA256)
	}
	if err != nil {
		f.Close()
		return nil, 0, "", err
	}
	return f, n, sum, nil
}

// begin marks the device as updating and returns the inbox its messages
// go to, with the commit it runs.
func (s *session) begin(id string) (*inbox, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dev, ok := s.devices[id]
	switch {
	case !ok:
		return nil, "", fmt.Errorf("device %s: %w", id, driver.ErrUnknownDevice)
	case !dev.online:
		return nil, "", fmt.Errorf("device %s: %w", id, driver.ErrOffline)
	case dev.xfer != nil:
		return nil, "", fmt.Errorf("device %s: an update is already in progress", id)
	}
	dev.xfer = newInbox()
	return dev.xfer, dev.commit, nil
}

func (s *session) end(id string, in *inbox) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dev, ok := s.devices[id]; ok && dev.xfer == in {
		dev.xfer = nil
	}
	if in.dropped > 0 {
		s.log.Warn("mqtt: the device sent more than an update could read; dropped", "device", id, "messages", in.dropped)
	}
}

// updater is one Update's run.
type updater struct {
	s        *session
	id       string
	fw       driver.Firmware
	in       *inbox
	img      io.ReaderAt
	progress driver.Progress
	shown    int // the last percent told
	cmd      updateCmd
	snd      sender
	crcs     map[int]uint32 // CRC-32 of the chunks sent
}

func (u *updater) run(ctx context.Context) error {
	cfg := u.s.cfg
	u.tell(0)
	u.send(ctx)
	timer := time.NewTimer(cfg.ackTimeout)
	defer timer.Stop()
	var (
		attempts    = 1 // of what is outstanding (the command or the current chunk)
		installing  bool
		wentOffline bool // while installing
	)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("device %s: update to %s: %w", u.id, u.fw.Commit, ctx.Err())
		case <-u.s.ctx.Done():
			return fmt.Errorf("device %s: update to %s: %w", u.id, u.fw.Commit, driver.ErrNotOpen)
		case <-timer.C:
			if installing {
				return u.installTimedOut()
			}
			if attempts > cfg.retries {
				return fmt.Errorf("device %s: update to %s: no answer to %s after %d tries: %w",
					u.id, u.fw.Commit, u.outstanding(), attempts, driver.ErrOffline)
			}
			attempts++
			u.s.log.Debug("mqtt: no acknowledgement in time; sending again", "device", u.id, "what", u.outstanding(), "attempt", attempts)
			u.send(ctx)
			timer.Reset(cfg.ackTimeout)
		case <-u.in.wake:
			u.s.mu.Lock()
			events := u.in.take()
			u.s.mu.Unlock()
			for _, e := range events {
				switch {
				case e.removed:
					return fmt.Errorf("device %s: update to %s: the device's status was deleted: %w", u.id, u.fw.Commit, driver.ErrOffline)

				case e.status != nil:
					if e.status.Online && deref(e.status.Commit) == u.fw.Commit {
						u.tell(100)
						return nil
					}
					switch {
					case !e.status.Online && !installing:
						return fmt.Errorf("device %s: update to %s: went offline holding %d of %d chunks: %w",
							u.id, u.fw.Commit, max(u.snd.cur, 0), u.snd.Chunks, driver.ErrOffline)
					case !e.status.Online:
						wentOffline = true
					case wentOffline: // came back, running something else
						return &driver.UpdateError{LocalID: u.id, Reason: fmt.Sprintf("the device restarted running %q, not %q", deref(e.status.Commit), u.fw.Commit)}
					}

				case e.result != nil:
					r := e.result
					if r.Commit != u.fw.Commit {
						u.s.log.Debug("mqtt: ignored the result of another update", "device", u.id, "commit", r.Commit)
						continue
					}
					if !r.OK {
						return &driver.UpdateError{LocalID: u.id, Reason: r.Reason}
					}

				case e.ack != nil:
					if installing {
						continue // late acknowledgements of the last chunk
					}
					before := u.snd.cur
					wasStarted := u.snd.started
					v, why := u.snd.onAck(*e.ack)
					switch v {
					case ackStale:
						continue
					case ackInvalid:
						u.s.warn(u.id, "mqtt: ignored a firmware acknowledgement: "+why, "commit", e.ack.Commit)
						continue
					case ackResend:
						u.s.warn(u.id, "mqtt: sending a chunk again: the device "+why)
						if attempts > cfg.retries {
							return &driver.UpdateError{LocalID: u.id, Reason: fmt.Sprintf("chunk %d arrived wrong %d times: the device %s", u.snd.cur, attempts, why)}
						}
						attempts++
					case ackNext:
						if wasStarted && u.snd.cur == before {
							if attempts > cfg.retries {
								return &driver.UpdateError{LocalID: u.id, Reason: fmt.Sprintf("the device did not store chunk %d after %d tries", before, attempts)}
							}
							attempts++
						} else {
							attempts = 1
						}
						if !wasStarted && u.snd.cur > 0 {
							u.s.log.Info("mqtt: resuming a firmware transfer", "device", u.id, "commit", u.fw.Commit, "chunk", u.snd.cur, "chunks", u.snd.Chunks)
						}
						u.tell(u.snd.percent(u.snd.cur))
						if u.snd.done() {
							installing = true
							timer.Reset(cfg.installTimeout)
							continue
						}
					}
					u.send(ctx)
					timer.Reset(cfg.ackTimeout)
				}
			}
		}
	}
}

// outstanding names what waits for an acknowledgement.
func (u *updater) outstanding() string {
	if !u.snd.started {
		return "the update command"
	}
	return fmt.Sprintf("chunk %d of %d", u.snd.cur, u.snd.Chunks)
}

// send publishes the update command or the current chunk. A failure is
// only logged: the acknowledgement's timer sends it again.
func (u *updater) send(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, u.s.cfg.ackTimeout)
	defer cancel()
	topic, payload := u.s.topics.cmd(u.id), u.cmd.encode()
	if u.snd.started {
		n := u.snd.cur
		off, length := u.snd.span(n)
		payload = make([]byte, length)
		if _, err := u.img.ReadAt(payload, off); err != nil && !errors.Is(err, io.EOF) {
			u.s.log.Error("mqtt: cannot read the firmware", "device", u.id, "err", err)
			return
		}
		u.crcs[n] = crc32.ChecksumIEEE(payload)
		u.snd.sending(n)
		topic = u.s.topics.chunk(u.id, n)
	}
	if err := u.s.publish(ctx, topic, payload); err != nil {
		u.s.log.Debug("mqtt: cannot send; will try again", "device", u.id, "what", u.outstanding(), "err", err)
	}
}

// tell reports progress, never going back.
func (u *updater) tell(pc int) {
	if pc > u.shown {
		u.shown = pc
		u.progress(pc)
	}
}

// installTimedOut says why the device did not come back with the new
// firmware within install_timeout.
func (u *updater) installTimedOut() error {
	u.s.mu.Lock()
	defer u.s.mu.Unlock()
	dev, ok := u.s.devices[u.id]
	if !ok || !dev.online || u.s.cli == nil {
		return fmt.Errorf("device %s: update to %s: the device did not come back within %s after the transfer: %w",
			u.id, u.fw.Commit, u.s.cfg.installTimeout, driver.ErrOffline)
	}
	return &driver.UpdateError{LocalID: u.id, Reason: fmt.Sprintf("the device took the firmware but runs %q, not %q, %s later",
		dev.commit, u.fw.Commit, u.s.cfg.installTimeout)}
}
