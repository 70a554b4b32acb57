package server

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

// DeviceView is a device as operators see it.
type DeviceView struct {
	reeve.Device
	Online       bool   `json:"online"`
	Fleet        string `json:"fleet"`
	TargetCommit string `json:"target_commit"`
}

// Seen records that a device was heard from. It is kept in memory and
// written to the store in batches: every poll writing a row would make the
// database the limit of how many devices one server can hold.
func (s *Server) Seen(uuid string) {
	now := s.now()
	s.seenMu.Lock()
	s.seen[uuid] = now
	s.seenMu.Unlock()
}

func (s *Server) flushSeen(ctx context.Context) error {
	s.seenMu.Lock()
	batch := s.seen
	s.seen = map[string]time.Time{}
	s.seenMu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := s.st.TouchDevices(ctx, batch)
	if err != nil {
		s.seenMu.Lock()
		for k, v := range batch { // keep them for the next try
			if v.After(s.seen[k]) {
				s.seen[k] = v
			}
		}
		s.seenMu.Unlock()
	}
	return err
}

func (s *Server) openPoll(uuid string) {
	s.seenMu.Lock()
	s.polling[uuid]++
	s.seen[uuid] = s.now()
	s.seenMu.Unlock()
}

func (s *Server) closePoll(uuid string) {
	s.seenMu.Lock()
	if s.polling[uuid]--; s.polling[uuid] <= 0 {
		delete(s.polling, uuid)
	}
	s.seen[uuid] = s.now()
	s.seenMu.Unlock()
}

// online: long-polling now, or seen within 1.5 × its poll interval.
func (s *Server) online(d *reeve.Device) bool {
	s.seenMu.Lock()
	polling := s.polling[d.UUID] > 0
	if t, ok := s.seen[d.UUID]; ok && t.After(d.LastSeen) {
		d.LastSeen = t
	}
	s.seenMu.Unlock()
	if polling {
		return true
	}
	if d.LastSeen.IsZero() {
		return false
	}
	interval := s.opt.DefaultPollInterval
	if d.State.PollInterval != nil && d.State.PollInterval.D() > 0 {
		interval = d.State.PollInterval.D()
	}
	return s.now().Sub(d.LastSeen) <= interval*3/2
}

// viewMemo keeps what listing many devices reads once per fleet.
type viewMemo struct {
	fleets map[int64]reeve.Fleet
	latest map[int64]string // fleet → the commit it tracks ("" for none)
}

func newViewMemo() *viewMemo {
	return &viewMemo{fleets: map[int64]reeve.Fleet{}, latest: map[int64]string{}}
}

func (s *Server) view(ctx context.Context, d reeve.Device, memo *viewMemo) (DeviceView, error) {
	f, ok := memo.fleets[d.FleetID]
	if !ok {
		var err error
		if f, err = s.st.Fleet(ctx, d.FleetID); err != nil {
			return DeviceView{}, err
		}
		memo.fleets[f.ID] = f
	}
	v := DeviceView{Device: d, Fleet: f.Name}
	v.State.APIKey = nil // a secret of the device's
	v.Online = s.online(&v.Device)
	if d.PinnedRelease != "" {
		v.TargetCommit = d.PinnedRelease
		return v, nil
	}
	commit, ok := memo.latest[f.ID]
	if !ok {
		r, found, err := s.releaseFor(ctx, f, reeve.Device{})
		if err != nil {
			return v, err
		}
		if found {
			commit = r.Commit
		}
		memo.latest[f.ID] = commit
	}
	v.TargetCommit = commit
	return v, nil
}

// Devices lists devices, of one fleet when fleet is not "".
func (s *Server) Devices(ctx context.Context, fleet string) ([]DeviceView, error) {
	var fleetID int64
	if fleet != "" {
		f, err := s.Fleet(ctx, fleet)
		if err != nil {
			return nil, err
		}
		fleetID = f.ID
	}
	ds, err := s.st.Devices(ctx, fleetID)
	if err != nil {
		return nil, err
	}
	memo := newViewMemo()
	out := make([]DeviceView, 0, len(ds))
	for _, d := range ds {
		v, err := s.view(ctx, d, memo)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// Device returns one device.
func (s *Server) Device(ctx context.Context, uuid string) (DeviceView, error) {
	d, err := s.device(ctx, uuid)
	if err != nil {
		return DeviceView{}, err
	}
	return s.view(ctx, d, newViewMemo())
}

func (s *Server) device(ctx context.Context, uuid string) (reeve.Device, error) {
	if !reeve.ValidUUID(uuid) {
		return reeve.Device{}, reeve.Errorf(reeve.CodeInvalid, "%q is not a device UUID: use the 32 hex digits `reeve devices` shows", uuid)
	}
	return s.st.Device(ctx, uuid)
}

// updateDevice changes a device and wakes its long poll.
func (s *Server) updateDevice(ctx context.Context, uuid string, fn func(*reeve.Device) error) (DeviceView, error) {
	if _, err := s.device(ctx, uuid); err != nil {
		return DeviceView{}, err
	}
	d, err := s.st.UpdateDevice(ctx, uuid, fn)
	if err != nil {
		return DeviceView{}, err
	}
	s.hub.notify(d.FleetID)
	return s.view(ctx, d, newViewMemo())
}

// UpdateDevice renames a device or pins it to a release of its fleet (nil
// leaves a field; an empty pin follows the fleet again).
func (s *Server) UpdateDevice(ctx context.Context, uuid string, name, pinned *string) (DeviceView, error) {
	if name != nil && (*name == "" || len(*name) > 128) {
		return DeviceView{}, reeve.Errorf(reeve.CodeInvalid, "name: a device name is 1 to 128 characters")
	}
	return s.updateDevice(ctx, uuid, func(d *reeve.Device) error {
		if name != nil {
			d.Name = *name
		}
		if pinned != nil {
			if *pinned != "" {
				f, err := s.st.Fleet(ctx, d.FleetID)
				if err != nil {
					return err
				}
				if _, err := s.st.Release(ctx, f.ID, *pinned); err != nil {
					return releaseNotFound(err, f.Name, *pinned)
				}
			}
			d.PinnedRelease = *pinned
		}
		return nil
	})
}

// RevokeDeviceKey makes the device's key worthless: it is refused until it
// is provisioned again (key exchange with a provisioning key).
func (s *Server) RevokeDeviceKey(ctx context.Context, uuid string) error {
	_, err := s.updateDevice(ctx, uuid, func(d *reeve.Device) error {
		d.KeyHash = ""
		return nil
	})
	return err
}

// DeleteDevice removes a device, its variables and its log lines.
func (s *Server) DeleteDevice(ctx context.Context, uuid string) error {
	d, err := s.device(ctx, uuid)
	if err != nil {
		return err
	}
	if err := s.st.DeleteDevice(ctx, uuid); err != nil {
		return err
	}
	s.deleteDeviceLogs(ctx, uuid)
	s.hub.notify(d.FleetID)
	return nil
}

var tagKey = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$`)

// SetTag sets (or with del, removes) a device tag.
func (s *Server) SetTag(ctx context.Context, uuid, key, value string, del bool) (DeviceView, error) {
	if !tagKey.MatchString(key) {
		return DeviceView{}, reeve.Errorf(reeve.CodeInvalid, "%q is not a tag key: use up to 100 letters, digits, '.', '_', '/' or '-'", key)
	}
	if len(value) > 1024 {
		return DeviceView{}, reeve.Errorf(reeve.CodeInvalid, "value: a tag value is at most 1024 characters")
	}
	return s.updateDevice(ctx, uuid, func(d *reeve.Device) error {
		if del {
			if _, ok := d.Tags[key]; !ok {
				return reeve.Errorf(reeve.CodeNotFound, "device %s has no tag %q", uuid, key)
			}
			delete(d.Tags, key)
			return nil
		}
		if d.Tags == nil {
			d.Tags = reeve.Tags{}
		}
		d.Tags[key] = value
		return nil
	})
}

// PatchTags changes a device's own tags (through its agent): a nil value
// removes the tag. It returns all the device's tags.
func (s *Server) PatchTags(ctx context.Context, dev reeve.Device, patch map[string]*string) (reeve.Tags, error) {
	var p []reeve.Problem
	for k, v := range patch {
		if !tagKey.MatchString(k) {
			p = append(p, reeve.Problem{Path: "tags." + k, Message: "not a tag key: use up to 100 letters, digits, '.', '_', '/' or '-'"})
		}
		if v != nil && len(*v) > 1024 {
			p = append(p, reeve.Problem{Path: "tags." + k, Message: "a tag value is at most 1024 characters"})
		}
	}
	if len(p) > 0 {
		return nil, &reeve.ValidationError{Problems: p}
	}
	d, err := s.st.UpdateDevice(ctx, dev.UUID, func(d *reeve.Device) error {
		if d.Tags == nil {
			d.Tags = reeve.Tags{}
		}
		for k, v := range patch {
			if v == nil {
				delete(d.Tags, k)
			} else {
				d.Tags[k] = *v
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.hub.notify(d.FleetID)
	return nonNilTags(d.Tags), nil
}

// Tags returns a device's tags.
func (s *Server) Tags(ctx context.Context, dev reeve.Device) (reeve.Tags, error) {
	d, err := s.st.Device(ctx, dev.UUID)
	if err != nil {
		return nil, err
	}
	return nonNilTags(d.Tags), nil
}

func nonNilTags(t reeve.Tags) reeve.Tags {
	if t == nil {
		return reeve.Tags{}
	}
	return t
}

// Report merges what a device reported into its state.
func (s *Server) Report(ctx context.Context, dev reeve.Device, cs reeve.CurrentState) error {
	if len(cs) != 1 {
		return reeve.Errorf(reeve.CodeInvalid, "the report must hold exactly one device, keyed by its UUID (%d given)", len(cs))
	}
	rep, ok := cs[dev.UUID]
	if !ok {
		for other := range cs {
			return reeve.Errorf(reeve.CodeForbidden, "this key is device %s's: it cannot report for device %s", dev.UUID, other)
		}
	}
	if err := checkReport(rep); err != nil {
		return err
	}
	rep.Name = nil // the operator names devices
	now := s.now()
	merge := func(d *reeve.Device) error {
		d.State.Merge(rep)
		d.ReportedAt = now
		if now.After(d.LastSeen) {
			d.LastSeen = now
		}
		return nil
	}
	if !s.batching.Load() {
		_, err := s.st.UpdateDevice(ctx, dev.UUID, merge)
		return err
	}
	// Reports share commits: each one is a small write, and one fsync per
	// report would cap a server near a thousand devices reporting at once.
	// The answer waits for the commit, so an accepted report is stored.
	r := reportReq{update: store.DeviceUpdate{UUID: dev.UUID, Fn: merge}, done: make(chan error, 1)}
	select {
	case s.reports <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return errShuttingDown
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return errShuttingDown
	}
}

var errShuttingDown = reeve.Errorf(reeve.CodeUnavailable, "the server is shutting down: send it again")

type reportReq struct {
	update store.DeviceUpdate
	done   chan error
}

// maxReportBatch bounds how many reports share one commit.
const maxReportBatch = 512

// writeReports writes queued reports, as many per commit as have queued up
// while the previous commit was being made.
func (s *Server) writeReports(ctx context.Context) {
	batch := make([]reportReq, 0, maxReportBatch)
	updates := make([]store.DeviceUpdate, 0, maxReportBatch)
	for {
		batch, updates = batch[:0], updates[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.reports:
			batch = append(batch, r)
		}
	more:
		for len(batch) < maxReportBatch {
			select {
			case r := <-s.reports:
				batch = append(batch, r)
			default:
				break more
			}
		}
		for _, r := range batch {
			updates = append(updates, r.update)
		}
		errs, err := s.st.UpdateDevices(ctx, updates)
		for i, r := range batch {
			if err != nil {
				r.done <- err
			} else {
				r.done <- errs[i]
			}
		}
	}
}

func checkReport(r reeve.DeviceReport) error {
	var p []reeve.Problem
	pct := func(path string, v *float64) {
		if v != nil && (*v < 0 || *v > 100) {
			p = append(p, reeve.Problem{Path: path, Message: fmt.Sprintf("%v is not a percentage", *v)})
		}
	}
	pct("cpu_usage", r.CPUUsage)
	for path, v := range map[string]*int64{"memory_usage": r.MemoryUsage, "memory_total": r.MemoryTotal, "storage_usage": r.StorageUsage, "storage_total": r.StorageTotal} {
		if v != nil && *v < 0 {
			p = append(p, reeve.Problem{Path: path, Message: "must not be negative"})
		}
	}
	for app := range r.Apps {
		if !reeve.ValidUUID(app) {
			p = append(p, reeve.Problem{Path: "apps." + app, Message: "not an app UUID"})
		}
	}
	if len(p) > 0 {
		return &reeve.ValidationError{Problems: p}
	}
	return nil
}
