package fleetlink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"reeve.dev/reeve/internal/atomicfile"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// etagFile holds the ETag of the target the agent applied last, so that a
// restarted agent does not fetch and store the same target again.
const etagFile = "fleet-target.json"

type etagCache struct {
	Server  string `json:"server"`
	UUID    string `json:"uuid"`
	ETag    string `json:"etag"`
	Version int64  `json:"version"` // the agent's version of the target
}

// poller is the poll loop's memory.
type poller struct {
	etag        string // sent as If-None-Match
	refused     string // the ETag of the target refused last
	refusedLog  string // what was logged about it, to log it once
	longPollMax int    // seconds; 0 while the server does not offer long polls
	failures    int    // failed polls in a row
	lastErr     string // the error logged last, to log each once
}

// pollLoop polls the target state until ctx ends.
func (l *Link) pollLoop(ctx context.Context) {
	p := &poller{etag: l.loadETag()}
	for {
		kind, next, ok := l.pollOnce(ctx, p)
		if !ok {
			return
		}
		if !l.sleep(ctx, kind, next, l.poke) {
			return
		}
	}
}

// pollOnce makes one poll and handles its answer; it returns the wait
// before the next one, and false when ctx ended.
func (l *Link) pollOnce(ctx context.Context, p *poller) (kind string, next time.Duration, ok bool) {
	l.beat()
	defer l.beat()
	dc := l.deviceConfig()
	interval := dc.PollInterval
	var wait time.Duration
	if p.longPollMax > 0 && dc.InstantUpdates {
		wait = min(interval, time.Duration(p.longPollMax)*time.Second, serverapi.MaxWait*time.Second)
		wait = max(wait, time.Second)
	}
	start := l.cfg.Now()
	res, err := l.fetch(ctx, p.etag, wait)
	switch {
	case ctx.Err() != nil:
		return "", 0, false
	case errors.Is(err, errPoked):
		return waitLongPoll, 0, true // a plain poll at once
	case err == nil || isInvalid(err):
		p.longPollMax = res.LongPollMax
	}

	var pollErr error
	switch {
	case err == nil && res.NotModified:
	case err == nil && res.ETag != "" && res.ETag == p.refused:
		// Sent again although we said we had it (the server ignores
		// If-None-Match): refuse it quietly, and wait the interval.
		return waitRefused, l.jitter(interval), true
	case err == nil && l.localModeIn(res.Target):
		// The fleet says this device is in local mode: its target is set
		// on the device; the server's is only watched for the end of it.
		p.etag = res.ETag
		l.setLocalMode(true)
	case err == nil:
		l.setLocalMode(false)
		version, serr := l.apply(ctx, res.Target)
		switch {
		case serr == nil:
			p.etag, p.refused = res.ETag, ""
			l.saveETag(p.etag, version)
			interval = l.pollInterval() // the new target may set it
			l.mu.Lock()
			l.status.TargetError = ""
			l.mu.Unlock()
			l.log.Info("new target state from the fleet server", "version", version, "etag", p.etag)
		case isInvalid(serr):
			err = serr
		case ctx.Err() != nil:
			return "", 0, false
		default:
			pollErr = fmt.Errorf("store the target state: %w", serr)
		}
	case !isInvalid(err):
		pollErr = err
	}

	switch {
	case pollErr != nil && isUnauthorized(pollErr):
		l.pollFailed(p, pollErr, true)
		return waitUnauthorized, l.jitter(l.cfg.BackoffMax), true
	case pollErr != nil:
		p.failures++
		l.pollFailed(p, pollErr, false)
		return waitBackoff, l.backoff(p.failures), true
	}
	p.failures = 0
	if p.lastErr != "" {
		l.log.Info("the fleet server answers polls again")
		p.lastErr = ""
	}
	instant := l.deviceConfig().InstantUpdates // takes l.mu itself
	l.mu.Lock()
	l.status.LastPoll = l.cfg.Now()
	l.status.PollError = ""
	l.status.LongPolling = p.longPollMax > 0 && instant
	l.status.PollInterval = reeve.Duration(interval)
	l.mu.Unlock()
	l.setUnauthorized(srcPoll, false)

	if err != nil { // refused by the agent, or not even parsed
		l.refuseTarget(p, res.ETag, err)
		return waitRefused, l.jitter(interval), true
	}
	if p.longPollMax > 0 && l.deviceConfig().InstantUpdates { // the target just applied may have changed it
		// Poll again at once, but never more than once per BackoffMin
		// should a server answer long polls at once.
		return waitLongPoll, max(0, start.Add(l.cfg.BackoffMin).Sub(l.cfg.Now())), true
	}
	return waitPoll, l.jitter(interval), true
}

// refuseTarget records a target the agent refused: the apps run on as they
// are. Its ETag is kept in memory only, so that the server answers 304 (or
// holds the long poll) until the target changes, and a restart looks again.
func (l *Link) refuseTarget(p *poller, etag string, err error) {
	if etag != "" {
		p.etag, p.refused = etag, etag
	}
	msg := "the target state from the fleet server was refused, so the apps run on as they are: " + err.Error()
	l.mu.Lock()
	l.status.TargetError = msg
	l.mu.Unlock()
	if key := etag + "\x00" + msg; key != p.refusedLog {
		l.log.Error("target state refused; fix it on the fleet server", "etag", etag, "err", err)
		p.refusedLog = key
	}
}

// pollFailed records a failed poll; unauthorized is a refused device key.
func (l *Link) pollFailed(p *poller, err error, unauthorized bool) {
	msg := err.Error()
	if unauthorized {
		msg = msgKeyRefused + ": " + msg
	}
	l.mu.Lock()
	l.status.PollError = msg
	l.status.LongPolling = false
	l.mu.Unlock()
	l.setUnauthorized(srcPoll, unauthorized)
	switch {
	case unauthorized && p.lastErr != msgKeyRefused:
		l.log.Error(msgKeyRefused, "err", err)
		p.lastErr = msgKeyRefused
	case unauthorized:
	case msg != p.lastErr:
		l.log.Warn("poll failed; retrying", "err", err)
		p.lastErr = msg
	default:
		l.log.Debug("poll failed; retrying", "err", err)
	}
}

// apply hands a new target to the agent, unless the agent holds that very
// target already (a server that sends no ETag would otherwise have it
// stored again at every poll).
func (l *Link) apply(ctx context.Context, ts reeve.TargetState) (int64, error) {
	if cur, version := l.agent.Target(); version != 0 { // 0: the agent has stored none
		a, aerr := json.Marshal(cur)
		b, berr := json.Marshal(ts)
		if aerr == nil && berr == nil && bytes.Equal(a, b) {
			return version, nil
		}
	}
	return l.agent.SetTarget(ctx, ts)
}

// fetch makes one GET of the target state. A Poke turns a pending long
// poll into a plain poll, and cancels one in flight (errPoked).
func (l *Link) fetch(ctx context.Context, etag string, wait time.Duration) (serverapi.StateResult, error) {
	pctx, cancelPoke := context.WithCancelCause(ctx)
	defer cancelPoke(nil)
	l.mu.Lock()
	if l.pokePending {
		wait = 0
		l.pokePending = false
	}
	select { // this poll answers any Poke so far
	case <-l.poke:
	default:
	}
	if wait > 0 {
		l.cancelPoll = cancelPoke
	}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.cancelPoll = nil
		l.mu.Unlock()
	}()

	rctx, cancel := l.requestContext(pctx, wait)
	defer cancel()
	res, err := l.client.State(rctx, l.uuid, etag, wait)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(pctx), errPoked) {
		return res, errPoked
	}
	return res, err
}

// localModeIn reports whether a target from the server puts the device in
// local mode (REEVE_SUPERVISOR_LOCAL_MODE=1).
func (l *Link) localModeIn(ts reeve.TargetState) bool {
	dc, _ := reeve.ParseDeviceConfig(ts[l.uuid].Config, reeve.DefaultDeviceConfig())
	return dc.LocalMode
}

func (l *Link) setLocalMode(on bool) {
	l.mu.Lock()
	was := l.status.LocalMode
	l.status.LocalMode = on
	l.mu.Unlock()
	switch {
	case on && !was:
		l.log.Info("local mode: the fleet's targets are not applied; set the target through the local API until the fleet turns it off")
	case !on && was:
		l.log.Info("local mode ended: the fleet's target applies again")
	}
}

// LocalMode reports whether the fleet put the device in local mode.
func (l *Link) LocalMode() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status.LocalMode
}

// deviceConfig reads the target's config variables (reeve.ParseDeviceConfig)
// and logs each warning once.
func (l *Link) deviceConfig() reeve.DeviceConfig {
	ts, _ := l.agent.Target()
	dc, warnings := reeve.ParseDeviceConfig(ts[l.uuid].Config, reeve.DeviceConfig{
		PollInterval: l.cfg.PollInterval, InstantUpdates: true, APIRequestTimeout: l.cfg.RequestTimeout})
	joined := strings.Join(warnings, "; ")
	l.mu.Lock()
	warn := joined != l.badConfig
	l.badConfig = joined
	l.mu.Unlock()
	if warn && joined != "" {
		l.log.Warn("the device config has values the agent cannot use", "warnings", joined)
	}
	return dc
}

// pollInterval is the target's REEVE_SUPERVISOR_POLL_INTERVAL (or its
// BALENA_ or RESIN_ form), else PollInterval.
func (l *Link) pollInterval() time.Duration {
	return l.deviceConfig().PollInterval
}

// loadETag returns the ETag of the target the agent holds, when it is
// still the one the link stored.
func (l *Link) loadETag() string {
	b, err := os.ReadFile(filepath.Join(l.cfg.DataDir, etagFile))
	if err != nil {
		if !os.IsNotExist(err) {
			l.log.Warn("cannot read the cached ETag; fetching the target afresh", "err", err)
		}
		return ""
	}
	var c etagCache
	if err := json.Unmarshal(b, &c); err != nil {
		l.log.Warn("the cached ETag is damaged; fetching the target afresh", "err", err)
		return ""
	}
	_, version := l.agent.Target()
	if c.Server != l.client.BaseURL() || c.UUID != l.uuid || c.Version != version || version == 0 {
		return "" // not the target the agent holds
	}
	return c.ETag
}

func (l *Link) saveETag(etag string, version int64) {
	b, err := json.Marshal(etagCache{Server: l.client.BaseURL(), UUID: l.uuid, ETag: etag, Version: version})
	if err == nil {
		err = atomicfile.Write(filepath.Join(l.cfg.DataDir, etagFile), b, 0o600)
	}
	if err != nil {
		// Costs one fetch of the same target after a restart.
		l.log.Warn("cannot cache the ETag of the target", "err", err)
	}
}
