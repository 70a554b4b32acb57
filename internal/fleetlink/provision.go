package fleetlink

import (
	"context"
	"fmt"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/serverapi"
)

// provision registers the device when config.json still holds a
// provisioning key, retrying until it succeeds; it returns false when ctx
// ended first. The identity it registers was saved by EnsureIdentity
// before, so a power cut at any point leaves a device that can finish the
// job at the next start (through the 409 and key-exchange path).
func (l *Link) provision(ctx context.Context) bool {
	if l.conf.ProvisioningKey == "" {
		return true
	}
	failures := 0
	lastErr := ""
	for {
		l.beat()
		err := l.register(ctx)
		switch {
		case err == nil:
			l.provisioned()
			return true
		case ctx.Err() != nil:
			return false
		}
		var wait time.Duration
		msg, refused := err.Error(), false
		switch reeve.ErrorCode(err) {
		case reeve.CodeUnauthorized:
			refused = true
			wait = l.jitter(l.cfg.BackoffMax)
			msg = fmt.Sprintf("the server refused the provisioning key in %s (%v): it is unknown, revoked or expired; put a valid provisioning key of the device's fleet in provisioningKey (`reeve key create --fleet F`) and restart the agent", l.conf.Path, err)
		case reeve.CodeInvalid, reeve.CodeForbidden, reeve.CodeNotFound:
			// The server will say the same until someone changes
			// something: ask again slowly.
			wait = l.jitter(l.cfg.BackoffMax)
			msg = fmt.Sprintf("the server refused to register this device: %v; fix config.json (%s) or the fleet", err, l.conf.Path)
		default: // the network, the server: try again soon
			failures++
			wait = l.backoff(failures)
		}
		l.mu.Lock()
		l.status.ProvisionError = msg
		l.mu.Unlock()
		l.setUnauthorized(srcProvision, refused)
		if msg != lastErr {
			l.log.Warn("registration failed; retrying", "err", msg, "retry_in", wait)
			lastErr = msg
		} else {
			l.log.Debug("registration failed; retrying", "err", msg, "retry_in", wait)
		}
		if !l.sleep(ctx, waitProvision, wait, l.poke) {
			return false
		}
	}
}

// register makes one attempt: register, or on 409 take the key-exchange
// path of docs/api.md.
func (l *Link) register(ctx context.Context) error {
	pc := l.client.WithToken(l.conf.ProvisioningKey)
	rctx, cancel := l.requestContext(ctx, 0)
	defer cancel()
	_, err := pc.Register(rctx, serverapi.RegisterRequest{
		UUID:       l.uuid,
		DeviceType: l.deviceType(),
		APIKey:     l.conf.DeviceAPIKey,
		Name:       l.conf.DeviceName,
	})
	if err == nil {
		l.log.Info("device registered", "uuid", l.uuid, "server", l.client.BaseURL())
		l.forgetReports() // a new device on the server has no state yet
		return nil
	}
	if reeve.ErrorCode(err) != reeve.CodeConflict {
		return err
	}
	// Registered before, but the device could not record it (or it was
	// reflashed with the same identity). Does its own key work?
	_, err = l.client.State(rctx, l.uuid, "", 0)
	switch {
	case err == nil || isInvalid(err):
		// The server answered with the device's target: the key works
		// (whether the target is good is the poll loop's business).
		l.log.Info("device was already registered with this key", "uuid", l.uuid)
		return nil
	case !isUnauthorized(err):
		return fmt.Errorf("the device is already registered and checking its key failed: %w", err)
	}
	if err := pc.KeyExchange(rctx, l.uuid, l.conf.DeviceAPIKey); err != nil {
		return fmt.Errorf("the device is already registered with another key: %w", err)
	}
	l.log.Info("device was already registered; its key was replaced through the key exchange", "uuid", l.uuid)
	l.forgetReports()
	return nil
}

// provisioned drops the provisioning key from config.json: the device has
// its own key now.
func (l *Link) provisioned() {
	l.conf.ProvisioningKey = ""
	if err := l.conf.Save(); err != nil {
		// The device is registered whatever the file says; at the next
		// start it registers again, gets 409 and finds its key works.
		l.log.Error("the device is registered but the provisioning key could not be removed from config.json", "err", err)
	}
	l.mu.Lock()
	l.status.Provisioned = true
	l.status.ProvisionError = ""
	l.mu.Unlock()
	l.setUnauthorized(srcProvision, false)
}

// deviceType is config.json's deviceType, else the agent's, else
// generic-<arch> as the agent defaults to.
func (l *Link) deviceType() string {
	if l.conf.DeviceType != "" {
		return l.conf.DeviceType
	}
	if a, ok := l.agent.(interface{ DeviceType() string }); ok {
		if t := a.DeviceType(); t != "" {
			return t
		}
	}
	return defaultDeviceType()
}
