package serverapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

const (
	dcUUID    = "5d6c4a0e2b8f4c1e9a7d3b6f0e1c2a4b"
	dcAppUUID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
)

// dcRequest is one request the fake device server saw.
type dcRequest struct {
	Method, Path, Query, Auth, IfNoneMatch string
	Body                                   string
}

// dcServer answers the device routes with canned responses and records
// what it was sent.
type dcServer struct {
	mu      sync.Mutex
	reqs    []dcRequest
	handler func(w http.ResponseWriter, r *http.Request)
}

func (s *dcServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.reqs = append(s.reqs, dcRequest{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Auth: r.Header.Get("Authorization"), IfNoneMatch: r.Header.Get("If-None-Match"), Body: string(body)})
	h := s.handler
	s.mu.Unlock()
	h(w, r)
}

func (s *dcServer) last(t *testing.T) dcRequest {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("the server received no request")
	}
	return s.reqs[len(s.reqs)-1]
}

func newDCServer(t *testing.T, token string, h func(w http.ResponseWriter, r *http.Request)) (*dcServer, *Client) {
	t.Helper()
	s := &dcServer{handler: h}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, NewClient(ts.URL, token, &http.Client{})
}

func dcTarget() string {
	return `{"` + dcUUID + `":{"name":"pi","config":{"REEVE_SUPERVISOR_POLL_INTERVAL":"60000"},"apps":{"` + dcAppUUID +
		`":{"id":1,"name":"fleet","class":"fleet","releases":{}}}}}`
}

func TestRegister(t *testing.T) {
	s, c := newDCServer(t, "provkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusCreated, reeve.Device{ID: 7, UUID: dcUUID, Name: "pi", DeviceType: "raspberrypi4-64"})
	})
	d, err := c.Register(t.Context(), RegisterRequest{UUID: dcUUID, DeviceType: "raspberrypi4-64", APIKey: strings.Repeat("a", 64)})
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != 7 || d.UUID != dcUUID {
		t.Errorf("device = %+v, want id 7 and the UUID", d)
	}
	got := s.last(t)
	if got.Method != http.MethodPost || got.Path != "/device/register" || got.Auth != "Bearer provkey" {
		t.Errorf("request = %s %s auth %q, want POST /device/register with the provisioning key", got.Method, got.Path, got.Auth)
	}
	var body RegisterRequest
	if err := json.Unmarshal([]byte(got.Body), &body); err != nil || body.UUID != dcUUID || body.APIKey != strings.Repeat("a", 64) {
		t.Errorf("body = %s (%v), want uuid and api_key", got.Body, err)
	}
}

func TestRegisterErrorsKeepTheirCode(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
	}{
		{http.StatusConflict, reeve.CodeConflict},
		{http.StatusUnauthorized, reeve.CodeUnauthorized},
	} {
		_, c := newDCServer(t, "provkey", func(w http.ResponseWriter, r *http.Request) {
			httpx.WriteError(w, nil, reeve.Errorf(tc.code, "nope"))
		})
		_, err := c.Register(t.Context(), RegisterRequest{UUID: dcUUID})
		if got := reeve.ErrorCode(err); got != tc.code {
			t.Errorf("status %d: code = %q (%v), want %q", tc.status, got, err, tc.code)
		}
	}
}

func TestRegisterDependentWire(t *testing.T) {
	s, c := newDCServer(t, "gwkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusCreated, reeve.Device{ID: 9, UUID: dcAppUUID, Name: "probe", GatewayID: 7, LocalID: "serial-1"})
	})
	d, err := c.RegisterDependent(t.Context(), dcUUID, RegisterDependentRequest{AppID: 3, DeviceType: "esp32", LocalID: "serial-1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.UUID != dcAppUUID || d.GatewayID != 7 || d.LocalID != "serial-1" {
		t.Errorf("device = %+v", d)
	}
	got := s.last(t)
	if got.Method != http.MethodPost || got.Path != "/device/v3/"+dcUUID+"/dependent-devices" || got.Auth != "Bearer gwkey" {
		t.Errorf("request = %s %s auth %q, want POST /device/v3/{gateway}/dependent-devices with the gateway's key", got.Method, got.Path, got.Auth)
	}
	if got.Body != `{"app_id":3,"device_type":"esp32","local_id":"serial-1"}` {
		t.Errorf("body = %s", got.Body)
	}
	_, c = newDCServer(t, "gwkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, nil, reeve.Errorf(reeve.CodeForbidden, "not yours"))
	})
	if _, err := c.RegisterDependent(t.Context(), dcUUID, RegisterDependentRequest{AppID: 3}); reeve.ErrorCode(err) != reeve.CodeForbidden {
		t.Errorf("error %v, want its code forbidden kept", err)
	}
}

func TestKeyExchange(t *testing.T) {
	s, c := newDCServer(t, "provkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	})
	if err := c.KeyExchange(t.Context(), dcUUID, "newkey"); err != nil {
		t.Fatal(err)
	}
	got := s.last(t)
	if got.Method != http.MethodPost || got.Path != "/device/v3/"+dcUUID+"/key-exchange" || got.Auth != "Bearer provkey" {
		t.Errorf("request = %s %s auth %q", got.Method, got.Path, got.Auth)
	}
	if !strings.Contains(got.Body, `"api_key":"newkey"`) {
		t.Errorf("body = %s, want the new key", got.Body)
	}
}

func TestState(t *testing.T) {
	s, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(LongPollHeader, "300")
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = io.WriteString(w, dcTarget())
	})
	res, err := c.State(t.Context(), dcUUID, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.NotModified || res.ETag != `"v1"` || res.LongPollMax != 300 {
		t.Errorf("result = %+v, want a target with ETag \"v1\" and long poll 300", res)
	}
	if res.Target[dcUUID].Apps[dcAppUUID].Name != "fleet" {
		t.Errorf("target = %+v, want the fleet app", res.Target)
	}
	first := s.last(t)
	if first.Path != "/device/v3/"+dcUUID+"/state" || first.Query != "" || first.IfNoneMatch != "" || first.Auth != "Bearer devkey" {
		t.Errorf("first request = %+v, want a plain GET with the device key", first)
	}

	res, err = c.State(t.Context(), dcUUID, `"v1"`, 90*time.Second+time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !res.NotModified || res.Target != nil || res.ETag != `"v1"` {
		t.Errorf("result = %+v, want not modified", res)
	}
	second := s.last(t)
	if second.IfNoneMatch != `"v1"` || second.Query != "wait=91" {
		t.Errorf("second request = %+v, want If-None-Match \"v1\" and wait=91 (rounded up)", second)
	}

	_, _ = c.State(t.Context(), dcUUID, `"v1"`, time.Hour)
	if q := s.last(t).Query; q != "wait=300" {
		t.Errorf("query = %q, want the wait capped at wait=300", q)
	}
}

func TestStateWithoutLongPoll(t *testing.T) {
	_, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		_, _ = io.WriteString(w, dcTarget())
	})
	res, err := c.State(t.Context(), dcUUID, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.LongPollMax != 0 {
		t.Errorf("LongPollMax = %d without the header, want 0", res.LongPollMax)
	}
}

func TestStateInvalidTarget(t *testing.T) {
	_, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"bad"`)
		w.Header().Set(LongPollHeader, "300")
		_, _ = io.WriteString(w, `{"`+dcUUID+`":{"name":"pi","apps":{},"surprise":1}}`)
	})
	res, err := c.State(t.Context(), dcUUID, "", 0)
	var ve *reeve.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a *reeve.ValidationError", err)
	}
	if reeve.ErrorCode(err) != reeve.CodeInvalid {
		t.Errorf("code = %q, want invalid", reeve.ErrorCode(err))
	}
	if res.ETag != `"bad"` || res.LongPollMax != 300 || res.Target != nil {
		t.Errorf("result = %+v, want the ETag and long poll of the refused answer and no target", res)
	}
}

func TestStateErrors(t *testing.T) {
	_, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, nil, reeve.Errorf(reeve.CodeUnauthorized, "unknown key"))
	})
	if _, err := c.State(t.Context(), dcUUID, "", 0); reeve.ErrorCode(err) != reeve.CodeUnauthorized {
		t.Errorf("err = %v, want code unauthorized", err)
	}
	_, c = newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad gateway", http.StatusBadGateway)
	})
	_, err := c.State(t.Context(), dcUUID, "", 0)
	if err == nil || reeve.ErrorCode(err) != reeve.CodeInternal || !strings.Contains(err.Error(), "502") {
		t.Errorf("err = %v, want an error naming the 502", err)
	}
}

// A long poll ends when its context does, whatever the server does.
func TestStateLongPollEndsWithContext(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	_, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select { // hold the request as a long poll would
		case <-r.Context().Done():
		case <-release:
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := c.State(ctx, dcUUID, `"v1"`, 300*time.Second)
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the long poll did not end when its context was cancelled")
	}
}

func TestReport(t *testing.T) {
	s, c := newDCServer(t, "devkey", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	})
	status := "Idle"
	if err := c.Report(t.Context(), reeve.CurrentState{dcUUID: {Status: &status}}); err != nil {
		t.Fatal(err)
	}
	got := s.last(t)
	if got.Method != http.MethodPatch || got.Path != "/device/v3/state" || got.Auth != "Bearer devkey" {
		t.Errorf("request = %s %s auth %q", got.Method, got.Path, got.Auth)
	}
	if got.Body != `{"`+dcUUID+`":{"status":"Idle"}}` {
		t.Errorf("body = %s, want only the status", got.Body)
	}
}
