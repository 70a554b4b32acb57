// Package sim is the gateway driver for simulated microcontrollers: boards
// that live in the gateway's process, take firmware in chunks, verify and
// install it, reboot, log, and fail on request (fault injection). Tests
// and `reeve dev` use it; nothing on it needs hardware.
package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve/internal/gateway/driver"
)

// Fault makes a board misbehave.
type Fault struct {
	// DropAt breaks the link once this fraction (0 < DropAt < 1) of a
	// transfer has gone, DropTimes times; a retry resumes where it broke.
	DropAt    float64
	DropTimes int
	// BrownOut makes the install fail BrownOutTimes times: the board
	// reboots on its old firmware.
	BrownOutTimes int
	// Reject makes the board refuse every image, with this reason.
	Reject string
}

// Board is one simulated microcontroller.
type Board struct {
	LocalID    string
	DeviceType string
	Commit     string
	Online     bool
	Restarts   int
	Identified int
	Env        map[string]string
	Config     map[string]string
	Fault      Fault

	logs []driver.LogLine
	// partial is the firmware being received: its sha256 and the bytes
	// so far, so that a transfer that broke resumes.
	partialSum string
	partial    []byte
}

// Lab is the simulated world: the boards, which outlive a driver's Close
// (pausing the gateway does not power the boards off).
type Lab struct {
	mu     sync.Mutex
	boards map[string]*Board
	// ChunkSize and ChunkDelay pace transfers: a board takes ChunkSize
	// bytes every ChunkDelay (a slow radio link).
	ChunkSize  int
	ChunkDelay time.Duration
}

// NewLab returns an empty lab with 4 KiB chunks and no delay.
func NewLab() *Lab { return &Lab{boards: map[string]*Board{}, ChunkSize: 4096} }

// Add puts a board in the lab, online, running commit.
func (l *Lab) Add(localID, deviceType, commit string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.boards[localID] = &Board{LocalID: localID, DeviceType: deviceType, Commit: commit, Online: true}
}

// Remove takes a board out of the lab.
func (l *Lab) Remove(localID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.boards, localID)
}

// Update changes a board (its fault, online, …) under the lab's lock.
func (l *Lab) Update(localID string, fn func(*Board)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.boards[localID]; ok {
		fn(b)
	}
}

// Get returns a copy of a board.
func (l *Lab) Get(localID string) (Board, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.boards[localID]
	if !ok {
		return Board{}, false
	}
	c := *b
	c.Env, c.Config = maps.Clone(b.Env), maps.Clone(b.Config)
	c.logs, c.partial = nil, nil
	return c, true
}

// Log makes a board log a line.
func (l *Lab) Log(localID, message string) {
	l.Update(localID, func(b *Board) { b.log(message, false) })
}

func (b *Board) log(message string, system bool) {
	const maxLines = 1000
	if len(b.logs) >= maxLines {
		b.logs = b.logs[1:]
	}
	b.logs = append(b.logs, driver.LogLine{Time: time.Now().UTC(), Message: message, System: system})
}

// Driver drives the boards of a Lab.
type Driver struct {
	lab *Lab

	mu   sync.Mutex
	open bool
}

// NewDriver returns a driver of the lab's boards.
func NewDriver(lab *Lab) *Driver { return &Driver{lab: lab} }

// New makes a driver with a lab of its own from settings:
//
//	devices      number of boards, named <prefix>0001, … (default 0)
//	prefix       default "sim-"
//	commit       what they run at first (default "")
//	device_type  default "sim"
//	chunk_size   bytes per chunk (default 4096)
//	chunk_delay  pause between chunks, a Go duration (default 0)
//	faults       id=fault,…: fault is reject, brownout, drop or offline
//	             (e.g. "sim-0003=reject,sim-0004=drop")
func New(settings map[string]string) (driver.Driver, error) {
	lab := NewLab()
	n, err := intSetting(settings, "devices", 0)
	if err != nil {
		return nil, err
	}
	if lab.ChunkSize, err = intSetting(settings, "chunk_size", 4096); err != nil {
		return nil, err
	}
	if lab.ChunkSize <= 0 {
		return nil, fmt.Errorf("sim: chunk_size must be positive")
	}
	if v := settings["chunk_delay"]; v != "" {
		if lab.ChunkDelay, err = time.ParseDuration(v); err != nil || lab.ChunkDelay < 0 {
			return nil, fmt.Errorf("sim: chunk_delay %q is not a duration such as 5ms", v)
		}
	}
	prefix, dtype := settings["prefix"], settings["device_type"]
	if prefix == "" {
		prefix = "sim-"
	}
	if dtype == "" {
		dtype = "sim"
	}
	for i := 1; i <= n; i++ {
		lab.Add(fmt.Sprintf("%s%04d", prefix, i), dtype, settings["commit"])
	}
	if f := settings["faults"]; f != "" {
		for _, item := range strings.Split(f, ",") {
			id, kind, ok := strings.Cut(strings.TrimSpace(item), "=")
			if !ok {
				return nil, fmt.Errorf("sim: fault %q: use id=reject|brownout|drop|offline", item)
			}
			if _, found := lab.Get(id); !found {
				return nil, fmt.Errorf("sim: fault for %q: no such board", id)
			}
			switch kind {
			case "reject":
				lab.Update(id, func(b *Board) { b.Fault.Reject = "the bootloader refused the image" })
			case "brownout":
				lab.Update(id, func(b *Board) { b.Fault.BrownOutTimes = 1 << 30 })
			case "drop":
				lab.Update(id, func(b *Board) { b.Fault.DropAt, b.Fault.DropTimes = 0.5, 1 })
			case "offline":
				lab.Update(id, func(b *Board) { b.Online = false })
			default:
				return nil, fmt.Errorf("sim: fault %q: use reject, brownout, drop or offline", kind)
			}
		}
	}
	return NewDriver(lab), nil
}

func intSetting(s map[string]string, key string, def int) (int, error) {
	v, ok := s[key]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("sim: %s %q is not a number", key, v)
	}
	return n, nil
}

// Lab returns the driver's boards.
func (d *Driver) Lab() *Lab { return d.lab }

func (d *Driver) Name() string { return "sim" }

func (d *Driver) Open(context.Context, driver.App) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open = true
	return nil
}

func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.open = false
	return nil
}

func (d *Driver) checkOpen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.open {
		return fmt.Errorf("sim: %w", driver.ErrNotOpen)
	}
	return nil
}

func (d *Driver) Scan(context.Context) ([]driver.Device, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	d.lab.mu.Lock()
	defer d.lab.mu.Unlock()
	out := make([]driver.Device, 0, len(d.lab.boards))
	for _, b := range d.lab.boards {
		out = append(out, driver.Device{LocalID: b.LocalID, DeviceType: b.DeviceType, Online: b.Online, Commit: b.Commit,
			Info: map[string]string{"model": "reeve simulated board"}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LocalID < out[j].LocalID })
	return out, nil
}

// board runs fn on an online board.
func (d *Driver) board(localID string, fn func(*Board) error) error {
	if err := d.checkOpen(); err != nil {
		return err
	}
	d.lab.mu.Lock()
	defer d.lab.mu.Unlock()
	b, ok := d.lab.boards[localID]
	if !ok {
		return fmt.Errorf("sim: %s: %w", localID, driver.ErrUnknownDevice)
	}
	if !b.Online {
		return fmt.Errorf("sim: %s: %w", localID, driver.ErrOffline)
	}
	return fn(b)
}

func (d *Driver) Update(ctx context.Context, localID string, fw driver.Firmware, progress driver.Progress) error {
	f, err := os.Open(filepath.Join(fw.Dir, fw.File))
	if err != nil {
		return fmt.Errorf("sim: firmware: %w", err)
	}
	defer f.Close()
	// Resume: the board keeps what it received of this image.
	var have int
	if err := d.board(localID, func(b *Board) error {
		if b.Fault.Reject != "" {
			return &driver.UpdateError{LocalID: localID, Reason: b.Fault.Reject}
		}
		if b.partialSum != fw.SHA256 {
			b.partialSum, b.partial = fw.SHA256, nil
		}
		have = len(b.partial)
		return nil
	}); err != nil {
		return err
	}
	if _, err := f.Seek(int64(have), io.SeekStart); err != nil {
		return err
	}
	size := max(fw.Size, 1)
	progress(int(int64(have) * 90 / size))
	buf := make([]byte, d.lab.ChunkSize)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			chunk := buf[:n]
			var got int
			if err := d.board(localID, func(b *Board) error {
				if b.Fault.DropTimes > 0 && float64(len(b.partial)+n) > b.Fault.DropAt*float64(size) {
					b.Fault.DropTimes--
					b.log("link lost during a firmware transfer", true)
					return fmt.Errorf("sim: %s: link lost at %d of %d bytes: %w", localID, len(b.partial), size, driver.ErrOffline)
				}
				b.partial = append(b.partial, chunk...)
				got = len(b.partial)
				return nil
			}); err != nil {
				return err
			}
			progress(int(int64(got) * 90 / size))
			if d.lab.ChunkDelay > 0 {
				select {
				case <-time.After(d.lab.ChunkDelay):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	// Verify and install.
	return d.board(localID, func(b *Board) error {
		sum := sha256.Sum256(b.partial)
		b.partial, b.partialSum = nil, ""
		if hex.EncodeToString(sum[:]) != fw.SHA256 {
			return &driver.UpdateError{LocalID: localID, Reason: "the image's checksum does not match: it was damaged on the way"}
		}
		if b.Fault.BrownOutTimes > 0 {
			b.Fault.BrownOutTimes--
			b.Restarts++
			b.log("brown-out while writing flash: rebooted on the old firmware", true)
			return &driver.UpdateError{LocalID: localID, Reason: "brown-out during install: the device rebooted on its old firmware"}
		}
		b.Commit = fw.Commit
		b.Restarts++
		b.log("installed firmware "+fw.Commit+" and rebooted", true)
		progress(100)
		return nil
	})
}

func (d *Driver) Restart(_ context.Context, localID string) error {
	return d.board(localID, func(b *Board) error {
		b.Restarts++
		b.log("rebooted", true)
		return nil
	})
}

func (d *Driver) Identify(_ context.Context, localID string) error {
	return d.board(localID, func(b *Board) error {
		b.Identified++
		return nil
	})
}

func (d *Driver) Configure(_ context.Context, localID string, env, config map[string]string) error {
	return d.board(localID, func(b *Board) error {
		b.Env, b.Config = maps.Clone(env), maps.Clone(config)
		return nil
	})
}

func (d *Driver) Logs(_ context.Context, localID string) ([]driver.LogLine, error) {
	var out []driver.LogLine
	err := d.board(localID, func(b *Board) error {
		out, b.logs = b.logs, nil
		return nil
	})
	return out, err
}
