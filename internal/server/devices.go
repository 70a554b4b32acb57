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
	// Online is, for a dependent device, whether its gateway reported
	// it online and is online itself.
	Online       bool   `json:"online"`
	Fleet        string `json:"fleet"`
	TargetCommit string `json:"target_commit"`
	// Gateway is, for a dependent device, the UUID of the device that
	// carries it.
	Gateway string `json:"gateway,omitempty"`
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

// viewMemo keeps what listing many devices reads once per fleet, and
// once per gateway.
type viewMemo struct {
	fleets   map[int64]reeve.Fleet
	latest   map[int64]string      // fleet → the commit it tracks ("" for none)
	gateways map[int64]gatewayView // gateway device ID → what its dependents show of it
}

// gatewayView is what a dependent device's view shows of its gateway.
type gatewayView struct {
	uuid   string // "" when it is gone
	online bool
}

func newViewMemo() *viewMemo {
	return &viewMemo{fleets: map[int64]reeve.Fleet{}, latest: map[int64]string{}, gateways: map[int64]gatewayView{}}
}

// gateway returns what a dependent device's view shows of its gateway,
// read once per memo.
func (s *Server) gateway(ctx context.Context, id int64, memo *viewMemo) (gatewayView, error) {
	if g, ok := memo.gateways[id]; ok {
		return g, nil
	}
	var g gatewayView
	gw, err := s.st.DeviceByID(ctx, id)
	switch {
	case reeve.ErrorCode(err) == reeve.CodeNotFound: // removed meanwhile: it carries nothing
	case err != nil:
		return g, err
	default:
		g = gatewayView{uuid: gw.UUID, online: s.online(&gw)}
	}
	memo.gateways[id] = g
	return g, nil
}

// dependentOnline: its gateway reported it online, and is online itself.
func dependentOnline(d reeve.Device, gw gatewayView) bool {
	return d.State.IsOnline != nil && *d.State.IsOnline && gw.online
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
	if d.GatewayID != 0 {
		gw, err := s.gateway(ctx, d.GatewayID, memo)
		if err != nil {
			return DeviceView{}, err
		}
		v.Gateway, v.Online = gw.uuid, dependentOnline(d, gw)
	} else {
		v.Online = s.online(&v.Device)
	}
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

// DeleteDevice removes a device, its variables and its log lines. A
// dependent device leaves its gateway's target at once; a gateway that
// still carries dependent devices is refused (conflict).
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

// ReportingDevice returns the UUID of the device that sends a report with
// key: the one entry of a report with one, else (a gateway's report, with
// entries for the dependent devices it carries) the key's device. Check
// the key itself with AuthDevice.
func (s *Server) ReportingDevice(ctx context.Context, key string, cs reeve.CurrentState) (string, error) {
	switch len(cs) {
	case 0:
		return "", reeve.Errorf(reeve.CodeInvalid, "the report holds no device: key it by this device's UUID")
	case 1:
		for uuid := range cs {
			return uuid, nil
		}
	}
	if key == "" {
		return "", errNoDeviceKey
	}
	d, err := s.st.DeviceByKeyHash(ctx, Hash(key))
	switch {
	case reeve.ErrorCode(err) == reeve.CodeNotFound:
		return "", reeve.Errorf(reeve.CodeUnauthorized, "this device key is not valid (unknown, revoked, or the device was deleted): provision the device again")
	case err != nil:
		return "", err
	}
	if _, ok := cs[d.UUID]; !ok {
		return "", reeve.Errorf(reeve.CodeForbidden, "this key is device %s's, and the report holds no entry for it: a device reports its own entry, and those of the dependent devices it carries", d.UUID)
	}
	return d.UUID, nil
}

// Report merges what a device reported into its state. A gateway's
// report may also hold entries for the dependent devices it carries, of
// which status, is_online, commit, environment and config are taken (any
// other field refuses the report); entries for devices it does not carry
// (or no longer) are skipped. The report is written whole or not at all.
func (s *Server) Report(ctx context.Context, dev reeve.Device, cs reeve.CurrentState) error {
	rep, ok := cs[dev.UUID]
	if !ok {
		for _, other := range sortedKeys(cs) {
			return reeve.Errorf(reeve.CodeForbidden, "this key is device %s's: it cannot report for device %s", dev.UUID, other)
		}
		return reeve.Errorf(reeve.CodeInvalid, "the report holds no device: key it by this device's UUID")
	}
	if err := checkReport(rep); err != nil {
		return err
	}
	if err := checkDependentReports(dev.UUID, cs); err != nil {
		return err
	}
	updates, skipped := s.reportUpdates(dev, cs)
	errs, err := s.writeReport(ctx, updates)
	if err != nil {
		return err
	}
	if errs[0] != nil {
		return errs[0]
	}
	for i, uerr := range errs[1:] {
		switch {
		case uerr == nil:
		case uerr == errNotCarried || reeve.ErrorCode(uerr) == reeve.CodeNotFound:
			skipped = append(skipped, updates[i+1].UUID)
		default:
			return uerr
		}
	}
	if len(skipped) > 0 {
		s.log.Debug("report entries skipped: not dependent devices this device carries", "device", dev.UUID, "skipped", skipped)
	}
	return nil
}

// errNotCarried refuses the update of a report's entry for a device that
// the reporting device does not carry: the entry is skipped.
var errNotCarried = reeve.Errorf(reeve.CodeForbidden, "not a dependent device of this gateway")

// errGatewayNotWritten refuses the updates of a gateway's dependent
// devices when its own update failed: a report is written whole or not
// at all.
var errGatewayNotWritten = reeve.Errorf(reeve.CodeConflict, "the gateway's own entry was not written")

// reportUpdates are the store updates of a report: the device's own
// first, then one per other entry (a dependent device of the device, or
// skipped when written). skipped lists the entries left out at once.
func (s *Server) reportUpdates(dev reeve.Device, cs reeve.CurrentState) (updates []store.DeviceUpdate, skipped []string) {
	rep := cs[dev.UUID]
	rep.Name = nil // the operator names devices
	now := s.now()
	ownWritten := false // the updates run in order, in one transaction
	updates = append(updates, store.DeviceUpdate{UUID: dev.UUID, Fn: func(d *reeve.Device) error {
		d.State.Merge(rep)
		d.ReportedAt = now
		if now.After(d.LastSeen) {
			d.LastSeen = now
		}
		ownWritten = true
		return nil
	}})
	for _, uuid := range sortedKeys(cs) {
		if uuid == dev.UUID {
			continue
		}
		if dev.GatewayID != 0 { // a dependent device carries none
			skipped = append(skipped, uuid)
			continue
		}
		dep := dependentReport(cs[uuid])
		updates = append(updates, store.DeviceUpdate{UUID: uuid, Fn: func(d *reeve.Device) error {
			switch {
			case !ownWritten:
				return errGatewayNotWritten
			case d.GatewayID != dev.ID:
				return errNotCarried
			}
			d.State.Merge(dep)
			d.ReportedAt = now
			if d.State.IsOnline != nil && *d.State.IsOnline && now.After(d.LastSeen) {
				d.LastSeen = now // its gateway hears from it
			}
			return nil
		}})
	}
	return updates, skipped
}

// writeReport writes a report's updates in one transaction and returns
// each one's error (UpdateDevices). Reports share commits: each one is a
// small write, and one fsync per report would cap a server near a
// thousand devices reporting at once. The answer waits for the commit, so
// an accepted report is stored.
func (s *Server) writeReport(ctx context.Context, updates []store.DeviceUpdate) ([]error, error) {
	if !s.batching.Load() {
		return s.st.UpdateDevices(ctx, updates)
	}
	r := reportReq{updates: updates, done: make(chan reportRes, 1)}
	select {
	case s.reports <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closed:
		return nil, errShuttingDown
	}
	select {
	case res := <-r.done:
		return res.errs, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closed:
		return nil, errShuttingDown
	}
}

var errShuttingDown = reeve.Errorf(reeve.CodeUnavailable, "the server is shutting down: send it again")

// reportReq is one report for writeReports: its updates, written in one
// transaction with those of other reports.
type reportReq struct {
	updates []store.DeviceUpdate
	done    chan reportRes
}

// reportRes is what came of a reportReq: each update's error, or err for
// the transaction as a whole.
type reportRes struct {
	errs []error
	err  error
}

// maxReportBatch bounds how many updates (of a device each) share one
// commit: a report's are never split.
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
			updates = append(updates, r.updates...)
		}
	more:
		for len(updates) < maxReportBatch {
			select {
			case r := <-s.reports:
				batch = append(batch, r)
				updates = append(updates, r.updates...)
			default:
				break more
			}
		}
		errs, err := s.st.UpdateDevices(ctx, updates)
		for _, r := range batch {
			if err != nil {
				r.done <- reportRes{err: err}
				continue
			}
			n := len(r.updates)
			r.done <- reportRes{errs: errs[:n:n]}
			errs = errs[n:]
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
