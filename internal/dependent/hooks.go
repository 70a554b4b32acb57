package dependent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"reeve.dev/reeve"
)

// Hooks tell the gateway application (the edge node manager) that a
// dependent device must change:
//
//   - PUT <address>/v1/devices/<uuid> with {appId, commit, environment,
//     config} when the device's target differs from what the gateway
//     application reports it runs and from what it last acknowledged,
//     and the firmware of that target is on the device. 200 acknowledges
//     and 202 accepts the target (no more hooks until it changes again);
//     anything else, a timeout or no answer is tried again later.
//   - DELETE <address>/v1/devices/<uuid> for a device removed from the
//     fleet; its record goes once the gateway application answers 200.
//
// At most one hook goes per device per HookInterval (30 s), each bounded
// by HookTimeout (10 s), at most hookParallel at once: a gateway
// application that hangs or fails costs the agent nothing else.
const (
	DefaultHookInterval = 30 * time.Second
	DefaultHookTimeout  = 10 * time.Second
	// DefaultHookAddress is where hooks go when neither the gateway
	// service's environment nor the device config names an address.
	DefaultHookAddress = "http://127.0.0.1:1337/v1/devices/"
	hookParallel       = 8
	hookTick           = 5 * time.Second
)

// HookAddressVars are the names the hook address is read from: a gateway
// service's environment, then the device config.
var HookAddressVars = []string{"REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS", "BALENA_DEPENDENT_DEVICES_HOOK_ADDRESS", "RESIN_DEPENDENT_DEVICES_HOOK_ADDRESS"}

// HookAddress picks the hook address from a device's own target: the first
// service (by app, then service name) whose environment sets one of
// HookAddressVars, else the device config, else DefaultHookAddress.
func HookAddress(dev reeve.DeviceTarget) string {
	for _, appUUID := range sortedKeys(dev.Apps) {
		app := dev.Apps[appUUID]
		if app.Class == reeve.ClassDependent {
			continue
		}
		_, rel, ok := app.Release()
		if !ok {
			continue
		}
		for _, name := range sortedKeys(rel.Services) {
			for _, v := range HookAddressVars {
				if a := rel.Services[name].Environment[v]; a != "" {
					return a
				}
			}
		}
	}
	for _, v := range HookAddressVars {
		if a := dev.Config[v]; a != "" {
			return a
		}
	}
	return DefaultHookAddress
}

// hookURL is the URL of a device's hook under address. The address may
// name the gateway application ("http://127.0.0.1:1337") or, as balena's
// variable does, its devices route ("http://127.0.0.1:1337/v1/devices/").
func hookURL(address, uuid string) (string, error) {
	if address == "" {
		address = DefaultHookAddress
	}
	u, err := url.Parse(address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("the hook address %q is not an http(s) URL: set REEVE_DEPENDENT_DEVICES_HOOK_ADDRESS to one such as %s", address, DefaultHookAddress)
	}
	base := strings.TrimRight(address, "/")
	if !strings.HasSuffix(base, "/v1/devices") {
		base += "/v1/devices"
	}
	return base + "/" + url.PathEscape(uuid), nil
}

// HookBody is what a PUT hook carries.
type HookBody struct {
	AppID       int64             `json:"appId"`
	Commit      string            `json:"commit"`
	Environment map[string]string `json:"environment"`
	Config      map[string]string `json:"config"`
}

func (m *Manager) hookLoop(ctx context.Context) {
	t := time.NewTicker(hookTick)
	defer t.Stop()
	warned := map[string]string{} // device → last failure logged
	for {
		m.sendDueHooks(ctx, warned)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.wake:
		}
	}
}

// hook is one hook to send.
type hook struct {
	dev    Device
	delete bool
	hash   string // the target hash a PUT tells of
}

// dueHooks lists the hooks due now.
func (m *Manager) dueHooks(ctx context.Context) ([]hook, error) {
	apps, err := m.st.apps(ctx)
	if err != nil {
		return nil, err
	}
	released := map[string]bool{}
	for _, a := range apps {
		released[a.UUID] = a.hooksHash != "" && a.hooksHash == a.targetHash
	}
	devs, err := m.st.devices(ctx)
	if err != nil {
		return nil, err
	}
	now := m.cfg.Now()
	var out []hook
	for _, d := range devs {
		if !d.hookAt.IsZero() && now.Sub(d.hookAt) < m.cfg.HookInterval {
			continue
		}
		if d.MarkedForDeletion {
			out = append(out, hook{dev: d, delete: true})
			continue
		}
		if !d.inTarget || d.TargetCommit == "" || !released[d.AppUUID] {
			continue
		}
		h := d.target().Hash()
		if h == d.current().Hash() || h == d.ackedHash {
			continue
		}
		out = append(out, hook{dev: d, hash: h})
	}
	return out, nil
}

func (m *Manager) sendDueHooks(ctx context.Context, warned map[string]string) {
	hooks, err := m.dueHooks(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("cannot list the hooks to send", "err", err)
		}
		return
	}
	if len(hooks) == 0 {
		return
	}
	address := m.cfg.HookAddress()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		sem = make(chan struct{}, hookParallel)
	)
	for _, h := range hooks {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			result, err := m.sendHook(ctx, address, h)
			if ctx.Err() != nil {
				return
			}
			uuid := h.dev.UUID
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if warned[uuid] != err.Error() {
					m.log.Warn("hook to the gateway application failed; trying again later", "device", uuid, "err", err, "retry_in", m.cfg.HookInterval)
					warned[uuid] = err.Error()
				}
				return
			}
			delete(warned, uuid)
			m.log.Info("hook sent", "device", uuid, "delete", h.delete, "result", result)
		}()
	}
	wg.Wait()
}

// sendHook sends one hook and records its outcome.
func (m *Manager) sendHook(ctx context.Context, address string, h hook) (string, error) {
	at := m.cfg.Now()
	target, err := hookURL(address, h.dev.UUID)
	if err != nil {
		_ = m.st.hookSent(ctx, h.dev.UUID, at, err.Error(), "")
		return "", err
	}
	method, body := http.MethodDelete, []byte(nil)
	if !h.delete {
		method = http.MethodPut
		t := h.dev.target()
		body, _ = json.Marshal(HookBody{AppID: h.dev.AppID, Commit: t.Commit, Environment: nonNil(t.Environment), Config: nonNil(t.Config)})
	}
	rctx, cancel := context.WithTimeout(ctx, m.cfg.HookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, method, target, bytes.NewReader(body))
	if err != nil {
		_ = m.st.hookSent(ctx, h.dev.UUID, at, err.Error(), "")
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.cfg.HTTPClient.Do(req)
	if err != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			err = fmt.Errorf("%s %s: no answer within %s", method, target, m.cfg.HookTimeout)
		}
		_ = m.st.hookSent(ctx, h.dev.UUID, at, err.Error(), "")
		return "", err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case h.delete && resp.StatusCode == http.StatusOK:
		m.mu.Lock()
		err := m.st.deleteDevice(ctx, h.dev.UUID)
		m.mu.Unlock()
		return "deleted", err
	case !h.delete && resp.StatusCode == http.StatusOK:
		return "acknowledged", m.st.hookSent(ctx, h.dev.UUID, at, "acknowledged", h.hash)
	case !h.delete && resp.StatusCode == http.StatusAccepted:
		return "accepted", m.st.hookSent(ctx, h.dev.UUID, at, "accepted", h.hash)
	}
	err = fmt.Errorf("%s %s answered %s", method, target, resp.Status)
	_ = m.st.hookSent(ctx, h.dev.UUID, at, err.Error(), "")
	return "", err
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
