package lwm2m

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"reeve.dev/reeve/internal/gateway/driver"
)

// reply is a device's answer to a request.
type reply struct {
	code  codes.Code
	cf    int
	hasCF bool
	body  []byte
}

// codeError is a device answering a request with an error code.
type codeError struct {
	op   string
	code codes.Code
}

func (e *codeError) Error() string { return fmt.Sprintf("%s: device answered %v", e.op, e.code) }

// request sends one request to the device at reg's address, over the
// server's socket, and waits for the answer at most "timeout". accept < 0
// sends no Accept option; body nil sends no payload. A device that does
// not answer is driver.ErrOffline.
func (d *Driver) request(ctx context.Context, s *session, reg *registration, method codes.Code, p path, body []byte, accept int) (reply, error) {
	op := fmt.Sprintf("%v %s%s", method, reg.root, p)
	conn, err := s.srv.NewConn(reg.addr)
	if err != nil {
		if s.ctx.Err() != nil {
			return reply{}, errNotOpen
		}
		return reply{}, fmt.Errorf("%s: %w", op, err)
	}
	rctx, cancel := context.WithTimeout(ctx, d.cfg.timeout)
	defer cancel()
	cf := message.TextPlain
	if d.cfg.writeTLV && method == codes.PUT {
		cf = message.AppLwm2mTLV
	}
	var payload io.ReadSeeker
	if body != nil {
		payload = bytes.NewReader(body)
	}
	ps := reg.root + p.String()
	var req *pool.Message
	switch method {
	case codes.GET:
		req, err = conn.NewGetRequest(rctx, ps)
	case codes.PUT:
		req, err = conn.NewPutRequest(rctx, ps, cf, payload)
	case codes.POST:
		req, err = conn.NewPostRequest(rctx, ps, cf, payload)
	default:
		err = fmt.Errorf("method %v", method)
	}
	if err != nil {
		return reply{}, fmt.Errorf("%s: %w", op, err)
	}
	defer conn.ReleaseMessage(req)
	if accept >= 0 {
		req.SetAccept(message.MediaType(accept))
	}
	resp, err := conn.Do(req)
	if err != nil {
		switch {
		case s.ctx.Err() != nil:
			return reply{}, errNotOpen
		case ctx.Err() != nil:
			return reply{}, fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return reply{}, fmt.Errorf("%s: %w: %v", op, driver.ErrOffline, err)
	}
	defer conn.ReleaseMessage(resp)
	rep := reply{code: resp.Code()}
	if cf, err := resp.ContentFormat(); err == nil {
		rep.cf, rep.hasCF = int(cf), true
	}
	if rep.body, err = resp.ReadBody(); err != nil {
		return reply{}, fmt.Errorf("%s: read answer: %w", op, err)
	}
	return rep, nil
}

// writeBody encodes a string for a single-resource write.
func (d *Driver) writeBody(p path, v string) []byte {
	if !d.cfg.writeTLV {
		return []byte(v)
	}
	b, _ := EncodeTLV([]TLV{{Type: TLVResource, ID: p[2], Value: []byte(v)}}) // a Package URI or config fits
	return b
}

// readResource reads one resource in plain text (the device may answer
// otherwise); found is false when the device has no such resource.
func (d *Driver) readResource(ctx context.Context, s *session, reg *registration, p path) (v value, found bool, err error) {
	rep, err := d.request(ctx, s, reg, codes.GET, p, nil, cfText)
	if err == nil && rep.code == codes.NotAcceptable {
		// No plain text here: the device picks the format.
		rep, err = d.request(ctx, s, reg, codes.GET, p, nil, -1)
	}
	if err != nil {
		return value{}, false, err
	}
	switch rep.code {
	case codes.Content:
		v, err := decodeResource(rep.cf, rep.hasCF, rep.body, p)
		if err != nil {
			return value{}, false, fmt.Errorf("read %s: %w", p, err)
		}
		return v, true, nil
	case codes.NotFound:
		return value{}, false, nil
	}
	return value{}, false, &codeError{op: "read " + p.String(), code: rep.code}
}

// readInt reads an integer resource the device must have.
func (d *Driver) readInt(ctx context.Context, s *session, reg *registration, p path) (int64, error) {
	v, found, err := d.readResource(ctx, s, reg, p)
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, &codeError{op: "read " + p.String(), code: codes.NotFound}
	}
	n, err := v.Int()
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	return n, nil
}

// change sends a write (PUT) or execute (POST) and wants 2.04 Changed.
func (d *Driver) change(ctx context.Context, s *session, reg *registration, method codes.Code, p path, body []byte) error {
	rep, err := d.request(ctx, s, reg, method, p, body, -1)
	if err != nil {
		return err
	}
	if rep.code != codes.Changed {
		op := "write " + p.String()
		if method == codes.POST {
			op = "execute " + p.String()
		}
		return &codeError{op: op, code: rep.code}
	}
	return nil
}

// target finds an online device for an operation.
func (d *Driver) target(localID string) (*device, *registration, error) {
	dev, err := d.lookup(localID)
	if err != nil {
		return nil, nil, err
	}
	reg := d.current(dev)
	if reg == nil {
		return nil, nil, fmt.Errorf("lwm2m: %s: %w (not registered)", localID, driver.ErrOffline)
	}
	return dev, reg, nil
}

// Restart executes Reboot (/3/0/4). The device re-registers once it is up,
// and its Object 3 is read again then.
func (d *Driver) Restart(ctx context.Context, localID string) error {
	s, ctx, done, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	defer done()
	_, reg, err := d.target(localID)
	if err != nil {
		return err
	}
	if err := d.change(ctx, s, reg, codes.POST, pathReboot, nil); err != nil {
		return fmt.Errorf("lwm2m: restart %s: %w", localID, err)
	}
	d.log.Info("lwm2m: restarted", "endpoint", localID)
	return nil
}

// Identify executes the resource the "identify" setting names.
func (d *Driver) Identify(ctx context.Context, localID string) error {
	s, ctx, done, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	defer done()
	if d.cfg.identify == nil {
		return fmt.Errorf("lwm2m: identify: %w (LwM2M has no standard resource for it: set \"identify\")", errors.ErrUnsupported)
	}
	_, reg, err := d.target(localID)
	if err != nil {
		return err
	}
	if err := d.change(ctx, s, reg, codes.POST, d.cfg.identify, nil); err != nil {
		return fmt.Errorf("lwm2m: identify %s: %w", localID, err)
	}
	return nil
}

// configDoc is what Configure writes.
type configDoc struct {
	Env    map[string]string `json:"env"`
	Config map[string]string `json:"config"`
}

// Configure writes {"env":…,"config":…} to the resource the "configure"
// setting names.
func (d *Driver) Configure(ctx context.Context, localID string, env, config map[string]string) error {
	s, ctx, done, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	defer done()
	if d.cfg.configure == nil {
		return fmt.Errorf("lwm2m: configure: %w (LwM2M has no standard resource for it: set \"configure\")", errors.ErrUnsupported)
	}
	_, reg, err := d.target(localID)
	if err != nil {
		return err
	}
	if env == nil {
		env = map[string]string{}
	}
	if config == nil {
		config = map[string]string{}
	}
	doc, err := json.Marshal(configDoc{Env: env, Config: config})
	if err != nil {
		return fmt.Errorf("lwm2m: configure %s: %w", localID, err)
	}
	if err := d.change(ctx, s, reg, codes.PUT, d.cfg.configure, d.writeBody(d.cfg.configure, string(doc))); err != nil {
		return fmt.Errorf("lwm2m: configure %s: %w", localID, err)
	}
	return nil
}

// Logs is not supported: LwM2M has no log object.
func (d *Driver) Logs(ctx context.Context, localID string) ([]driver.LogLine, error) {
	_, _, done, err := d.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return nil, fmt.Errorf("lwm2m: logs: %w (LwM2M has no log object)", errors.ErrUnsupported)
}

// Object 5 states and results (OMA LwM2M 1.0 Appendix E.6).
const (
	stateIdle        = 0
	stateDownloading = 1
	stateDownloaded  = 2
	stateUpdating    = 3
	resultInitial    = 0
	resultSuccess    = 1
)

// updateResults are the Update Result (/5/0/5) failures.
var updateResults = map[int64]string{
	2: "not enough flash memory for the new firmware package",
	3: "out of RAM during the download",
	4: "connection lost during the download",
	5: "integrity check failure of the downloaded package",
	6: "unsupported package type",
	7: "invalid URI",
	8: "firmware update failed",
	9: "unsupported protocol",
}

// maxPackageURI is the Package URI resource's size (0-255 bytes).
const maxPackageURI = 255

// packageURI is what Update writes to /5/0/1.
func (d *Driver) packageURI(fw driver.Firmware) string {
	uri := fw.URL
	if d.cfg.uriDigest && fw.SHA256 != "" && !strings.Contains(uri, "#") {
		if withSum := uri + "#sha256=" + fw.SHA256; len(withSum) <= maxPackageURI {
			uri = withSum
		}
	}
	return uri
}

// Update installs fw by the Package URI (pull) method of Object 5; see
// the package documentation.
func (d *Driver) Update(ctx context.Context, localID string, fw driver.Firmware, progress driver.Progress) error {
	s, ctx, done, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	defer done()
	dev, reg, err := d.target(localID)
	if err != nil {
		return err
	}
	uri := d.packageURI(fw)
	if fw.URL == "" || len(uri) > maxPackageURI {
		return fmt.Errorf("lwm2m: update %s: firmware URL %q does not fit the Package URI (1-255 bytes)", localID, fw.URL)
	}
	select {
	case dev.updating <- struct{}{}:
	case <-ctx.Done():
		if s.ctx.Err() != nil {
			return errNotOpen
		}
		return fmt.Errorf("lwm2m: update %s: %w", localID, ctx.Err())
	}
	defer func() { <-dev.updating }()
	u := &update{d: d, s: s, dev: dev, reg: reg, fw: fw, uri: uri, progress: progress, last: -1}
	u.report(0)
	if err := u.run(ctx); err != nil {
		if s.ctx.Err() != nil {
			return errNotOpen
		}
		var ue *driver.UpdateError
		if errors.As(err, &ue) {
			d.log.Warn("lwm2m: update failed", "endpoint", localID, "commit", fw.Commit, "reason", ue.Reason)
			return err
		}
		return fmt.Errorf("lwm2m: update %s to %s: %w", localID, fw.Commit, err)
	}
	d.log.Info("lwm2m: updated", "endpoint", localID, "commit", fw.Commit)
	return nil
}

// update is one Update call's state.
type update struct {
	d        *Driver
	s        *session
	dev      *device
	reg      *registration // the registration requests go to
	fw       driver.Firmware
	uri      string
	progress driver.Progress
	last     int

	writtenAt  time.Time // when the Package URI was written
	executed   bool      // Update (/5/0/2) was executed, or found executed
	executedAt time.Time // when; the device may reboot from then on
	fresh      bool      // a failure in Update Result is this install's
	baseline   int64     // Update Result before the Package URI was written
	failures   int       // requests in a row the device did not answer
}

// report tells progress, never going back.
func (u *update) report(p int) {
	if p > u.last {
		u.last = p
		if u.progress != nil {
			u.progress(p)
		}
	}
}

func (u *update) fail(reason string) error {
	return &driver.UpdateError{LocalID: u.dev.ep, Reason: reason}
}

// maxSilent is how many requests in a row a device may leave unanswered
// before the update gives it up (before it was told to install).
const maxSilent = 3

func (u *update) run(ctx context.Context) error {
	d, s := u.d, u.s
	// A device that runs the release already has nothing to install.
	if v, found, err := d.readResource(ctx, s, u.reg, pathFirmwareVer); err != nil && !isCodeError(err) {
		return err
	} else if err == nil && found && v.String() == u.fw.Commit {
		u.done()
		return nil
	}
	state, err := d.readInt(ctx, s, u.reg, pathUpdateState)
	if err != nil {
		return u.noObject5(err)
	}
	result, err := d.readInt(ctx, s, u.reg, pathUpdateResult)
	if err != nil {
		return u.noObject5(err)
	}
	resume := false
	switch state {
	case stateDownloading, stateDownloaded:
		// An interrupted install of the same package goes on.
		if v, found, err := d.readResource(ctx, s, u.reg, pathPackageURI); err == nil && found && v.String() == u.uri {
			resume = true
		}
	case stateUpdating:
		resume, u.executed, u.executedAt = true, true, time.Now()
	}
	if resume {
		u.fresh = true
		d.log.Info("lwm2m: update goes on", "endpoint", u.dev.ep, "state", state)
	} else {
		if state != stateIdle || (result != resultInitial && result != resultSuccess) {
			// Writing an empty Package URI resets the state machine.
			if err := d.change(ctx, s, u.reg, codes.PUT, pathPackageURI, d.writeBody(pathPackageURI, "")); err != nil {
				return u.refused(err)
			}
			if result, err = u.settleReset(ctx); err != nil {
				return err
			}
		}
		u.baseline = result
		u.fresh = result == resultInitial || result == resultSuccess
		if err := d.change(ctx, s, u.reg, codes.PUT, pathPackageURI, d.writeBody(pathPackageURI, u.uri)); err != nil {
			return u.refused(err)
		}
		u.writtenAt = time.Now()
		d.log.Info("lwm2m: package URI written", "endpoint", u.dev.ep, "uri", u.fw.URL)
	}
	for {
		if !sleep(ctx, d.cfg.poll) {
			return ctx.Err()
		}
		finished, err := u.step(ctx)
		if finished || err != nil {
			return err
		}
	}
}

// step reads State and Update Result once and acts on them.
func (u *update) step(ctx context.Context) (finished bool, err error) {
	d, s := u.d, u.s
	reg := d.current(u.dev)
	if reg == nil {
		if !u.executed {
			return true, fmt.Errorf("%w: the device went away during the download", driver.ErrOffline)
		}
		return false, u.rebooting()
	}
	u.reg = reg
	state, err := d.readInt(ctx, s, reg, pathUpdateState)
	var result int64
	if err == nil {
		result, err = d.readInt(ctx, s, reg, pathUpdateResult)
	}
	if err != nil {
		if errors.Is(err, driver.ErrOffline) {
			return false, u.silent(err)
		}
		return true, u.noObject5(err)
	}
	u.failures = 0
	if state != stateIdle || result == resultInitial {
		u.fresh = true
	}
	if reason, failed := updateResults[result]; failed && (u.fresh || result != u.baseline) {
		return true, u.fail(fmt.Sprintf("update result %d: %s", result, reason))
	}
	if !u.executed {
		switch state {
		case stateDownloading:
			u.report(10)
		case stateDownloaded:
			u.report(50)
			if err := d.change(ctx, s, reg, codes.POST, pathUpdate, nil); err != nil {
				if errors.Is(err, driver.ErrOffline) {
					return false, u.silent(err) // it may have executed: State says
				}
				return true, u.refused(err)
			}
			u.executed, u.executedAt = true, time.Now()
			u.report(75)
			d.log.Info("lwm2m: update executed", "endpoint", u.dev.ep)
		case stateUpdating:
			u.executed, u.executedAt = true, time.Now()
			u.report(75)
		case stateIdle:
			if !u.writtenAt.IsZero() && time.Since(u.writtenAt) > d.cfg.rebootTimeout {
				return true, u.fail(fmt.Sprintf("the device did not start the download within %s", d.cfg.rebootTimeout))
			}
		}
		return false, nil
	}
	if state == stateUpdating {
		u.report(75)
	}
	if result != resultSuccess {
		return false, u.rebooting()
	}
	v, found, err := d.readResource(ctx, s, reg, pathFirmwareVer)
	if err != nil && !isCodeError(err) {
		return false, u.silent(err)
	}
	if err == nil && found && v.String() == u.fw.Commit {
		u.done()
		return true, nil
	}
	if time.Since(u.executedAt) > d.cfg.rebootTimeout {
		got := fmt.Sprintf("firmware version %q", v.String())
		if err != nil || !found {
			got = fmt.Sprintf("no firmware version (%v)", err)
		}
		return true, u.fail(fmt.Sprintf("update result 1, but the device reports %s, want %q", got, u.fw.Commit))
	}
	return false, nil
}

func isCodeError(err error) bool {
	var ce *codeError
	return errors.As(err, &ce)
}

// done records the device running fw.Commit.
func (u *update) done() {
	u.d.mu.Lock()
	if u.dev.info.fields == nil {
		u.dev.info.fields = map[string]string{}
	}
	u.dev.info.commit = u.fw.Commit
	u.dev.info.fields[deviceInfoKeys[3]] = u.fw.Commit
	u.dev.known = true
	u.d.mu.Unlock()
	u.report(100)
}

// rebooting bounds the wait for a device that was told to install.
func (u *update) rebooting() error {
	if time.Since(u.executedAt) > u.d.cfg.rebootTimeout {
		return fmt.Errorf("%w: the device did not come back within %s of the update", driver.ErrOffline, u.d.cfg.rebootTimeout)
	}
	return nil
}

// silent counts a request the device left unanswered: a few are the
// device gone, unless it was told to install (then it may be rebooting).
func (u *update) silent(err error) error {
	if u.executed {
		return u.rebooting()
	}
	if u.failures++; u.failures >= maxSilent {
		return err
	}
	return nil
}

// settleReset waits until a reset device says Idle, returning its Update
// Result.
func (u *update) settleReset(ctx context.Context) (int64, error) {
	start := time.Now()
	for {
		if time.Since(start) > u.d.cfg.rebootTimeout {
			return 0, u.fail(fmt.Sprintf("the device did not reset its firmware update state within %s", u.d.cfg.rebootTimeout))
		}
		if !sleep(ctx, u.d.cfg.poll) {
			return 0, ctx.Err()
		}
		reg := u.d.current(u.dev)
		if reg == nil {
			return 0, fmt.Errorf("%w: the device went away", driver.ErrOffline)
		}
		u.reg = reg
		state, err := u.d.readInt(ctx, u.s, reg, pathUpdateState)
		var result int64
		if err == nil {
			result, err = u.d.readInt(ctx, u.s, reg, pathUpdateResult)
		}
		if err != nil {
			if errors.Is(err, driver.ErrOffline) {
				if err := u.silent(err); err != nil {
					return 0, err
				}
				continue
			}
			return 0, u.noObject5(err)
		}
		u.failures = 0
		if state == stateIdle {
			return result, nil
		}
	}
}

// noObject5 turns a device refusing Object 5 reads into an UpdateError.
func (u *update) noObject5(err error) error {
	if isCodeError(err) {
		return u.fail(fmt.Sprintf("no firmware update object: %v", err))
	}
	return err
}

// refused turns a device refusing a write or execute into an UpdateError.
func (u *update) refused(err error) error {
	if isCodeError(err) {
		return u.fail(err.Error())
	}
	return err
}
