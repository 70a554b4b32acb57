package fleetlink

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve/internal/serverapi"
)

// The identity is on disk before the server hears of it, and the
// provisioning key leaves config.json once the device is registered.
func TestProvisionWritesIdentityBeforeRegistering(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"provisioningKey": testProvKey, "deviceType": "raspberrypi4-64", "hostname": "kept"})
	var mu sync.Mutex
	var onDisk *Config
	var sent serverapi.RegisterRequest
	h.srv.set(func(s *fakeServer) {
		s.onRegister = func(req serverapi.RegisterRequest) {
			c, err := LoadConfig(h.conf) // what a power cut now would leave
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("config.json at registration: %v", err)
				return
			}
			onDisk, sent = c, req
		}
	})
	h.identity()
	l := h.start(nil)

	waitFor(t, "the device to be provisioned", func() bool { return l.Status().Provisioned })
	mu.Lock()
	if onDisk == nil {
		t.Fatal("the server saw no registration")
	}
	if onDisk.UUID == "" || onDisk.UUID != sent.UUID || onDisk.DeviceAPIKey != sent.APIKey {
		t.Errorf("at registration config.json held uuid %q key %q; the request sent %q %q: the identity must be saved first",
			onDisk.UUID, onDisk.DeviceAPIKey, sent.UUID, sent.APIKey)
	}
	if sent.DeviceType != "raspberrypi4-64" {
		t.Errorf("device_type = %q, want config.json's", sent.DeviceType)
	}
	mu.Unlock()

	got := readJSONFile(t, h.conf)
	if _, ok := got["provisioningKey"]; ok {
		t.Errorf("config.json = %v, still holds the provisioning key after registering", got)
	}
	if got["uuid"] != sent.UUID || got["deviceApiKey"] != sent.APIKey || got["hostname"] != "kept" {
		t.Errorf("config.json = %v, want the identity and the hand-added key kept", got)
	}
	// Then it polls with its own key.
	waitFor(t, "a poll", func() bool { return len(h.srv.polls()) > 0 })
	if p := h.srv.polls()[0]; p.Auth != sent.APIKey || p.Status != http.StatusOK {
		t.Errorf("first poll = %+v, want it made with the device key and answered", p)
	}
	if n := len(h.srv.requests(http.MethodPost, "/key-exchange")); n != 0 {
		t.Errorf("%d key exchanges after a 201, want none", n)
	}
}

// Registered before but not recorded (a power cut): 409, and the device's
// key works, so there is nothing to exchange.
func TestProvisionConflictWithWorkingKey(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"provisioningKey": testProvKey})
	c := h.identity()
	h.srv.addDevice(c.UUID, c.DeviceAPIKey)
	l := h.start(nil)

	waitFor(t, "the device to be provisioned", func() bool { return l.Status().Provisioned })
	waitFor(t, "polls", func() bool { return len(h.srv.polls()) >= 2 })
	regs := h.srv.requests(http.MethodPost, "/device/register")
	if len(regs) != 1 || regs[0].Status != http.StatusConflict {
		t.Errorf("registrations = %s, want one answered 409", describe(regs))
	}
	if kx := h.srv.requests(http.MethodPost, "/key-exchange"); len(kx) != 0 {
		t.Errorf("key exchanges = %s, want none: the device's key works", describe(kx))
	}
	if _, ok := readJSONFile(t, h.conf)["provisioningKey"]; ok {
		t.Error("the provisioning key is still in config.json")
	}
}

// A reflashed device (same UUID, new key): 409, its key is refused, so it
// exchanges the key with the provisioning key, then works.
func TestProvisionConflictWithDeadKeyExchangesIt(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"provisioningKey": testProvKey})
	c := h.identity()
	h.srv.addDevice(c.UUID, strings.Repeat("0", 64))
	h.srv.setTarget(c.UUID, testTarget(c.UUID, "c1", nil))
	l := h.start(nil)

	waitFor(t, "the target to be applied", func() bool { return h.agent.setCount() == 1 })
	kx := h.srv.requests(http.MethodPost, "/key-exchange")
	if len(kx) != 1 || kx[0].Auth != testProvKey || kx[0].Status != http.StatusOK {
		t.Fatalf("key exchanges = %s, want one with the provisioning key", describe(kx))
	}
	if !l.Status().Provisioned || l.Status().Unauthorized {
		t.Errorf("status = %+v, want provisioned and authorized", l.Status())
	}
	if _, ok := readJSONFile(t, h.conf)["provisioningKey"]; ok {
		t.Error("the provisioning key is still in config.json")
	}
}

// A provisioned device does not register again.
func TestProvisionedConfigDoesNotRegister(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"uuid": "5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b", "deviceApiKey": strings.Repeat("d", 64)})
	h.identity()
	h.srv.addDevice(h.agent.uuid, strings.Repeat("d", 64))
	l := h.start(nil)
	waitFor(t, "three polls", func() bool { return len(h.srv.polls()) >= 3 })
	if regs := h.srv.requests(http.MethodPost, "/device/register"); len(regs) != 0 {
		t.Errorf("registrations = %s, want none", describe(regs))
	}
	if !l.Status().Provisioned {
		t.Error("status says not provisioned")
	}
}

// A refused provisioning key is shown with what to do, retried slowly, and
// nothing is polled meanwhile.
func TestProvisioningKeyRefused(t *testing.T) {
	h := newHarness(t)
	h.writeConfig(map[string]string{"provisioningKey": "revoked-key"})
	h.identity()
	l := h.start(nil)

	waitFor(t, "three registration attempts", func() bool {
		return len(h.srv.requests(http.MethodPost, "/device/register")) >= 3
	})
	st := l.Status()
	if st.Provisioned || !st.Unauthorized || !strings.Contains(st.ProvisionError, "provisioningKey") {
		t.Errorf("status = %+v, want unauthorized with a provision error telling what to fix", st)
	}
	for _, w := range h.waitsOf(waitProvision) {
		if w.D != 5*time.Millisecond { // BackoffMax, no jitter
			t.Errorf("wait after a refused key = %v, want BackoffMax", w.D)
		}
	}
	if n := len(h.srv.polls()); n != 0 {
		t.Errorf("%d polls before the device is registered, want none", n)
	}
	if strings.Count(h.logs.String(), "registration failed") < 1 {
		t.Error("the refusal was not logged")
	}

	// Once the key is valid (here: the server accepts it), it registers.
	h.srv.set(func(s *fakeServer) { s.provKey = "revoked-key" })
	waitFor(t, "the device to be provisioned", func() bool { return l.Status().Provisioned })
	if st := l.Status(); st.Unauthorized || st.ProvisionError != "" {
		t.Errorf("status = %+v, want the refusal cleared", st)
	}
}
