package serverapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/server"
)

// Handler serves the device and operator APIs.
type Handler struct {
	s        *server.Server
	log      *slog.Logger
	mux      *http.ServeMux
	opRoutes []string
}

// NewHandler returns the fleet server's HTTP handler.
func NewHandler(s *server.Server, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{s: s, log: log, mux: http.NewServeMux()}
	m := h.mux
	// Device API.
	m.HandleFunc("POST /device/register", h.register)
	m.HandleFunc("POST /device/v3/{uuid}/key-exchange", h.keyExchange)
	m.HandleFunc("GET /device/v3/{uuid}/state", h.state)
	m.HandleFunc("PATCH /device/v3/state", h.report)
	m.HandleFunc("GET /device/v3/{uuid}/tags", h.deviceTags)
	m.HandleFunc("PATCH /device/v3/{uuid}/tags", h.patchDeviceTags)
	m.HandleFunc("POST /device/v2/{uuid}/log-stream", h.logStream)
	m.HandleFunc("POST /device/v3/{uuid}/dependent-devices", h.registerDependent)
	// Operator API.
	op := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) error) {
		h.opRoutes = append(h.opRoutes, pattern)
		m.HandleFunc(pattern, h.operator(fn))
	}
	op("GET /api/v1/whoami", h.whoami)
	op("POST /api/v1/fleets", h.createFleet)
	op("GET /api/v1/fleets", h.fleets)
	op("GET /api/v1/fleets/{fleet}", h.fleet)
	op("PATCH /api/v1/fleets/{fleet}", h.updateFleet)
	op("DELETE /api/v1/fleets/{fleet}", h.deleteFleet)
	op("POST /api/v1/fleets/{fleet}/keys", h.createKey)
	op("GET /api/v1/fleets/{fleet}/keys", h.keys)
	op("DELETE /api/v1/keys/{id}", h.revokeKey)
	op("POST /api/v1/fleets/{fleet}/releases", h.push)
	op("GET /api/v1/fleets/{fleet}/releases", h.releases)
	op("GET /api/v1/fleets/{fleet}/releases/{commit}", h.release)
	op("GET /api/v1/devices", h.devices)
	op("GET /api/v1/devices/{uuid}", h.device)
	op("PATCH /api/v1/devices/{uuid}", h.updateDevice)
	op("DELETE /api/v1/devices/{uuid}", h.deleteDevice)
	op("DELETE /api/v1/devices/{uuid}/key", h.revokeDeviceKey)
	op("PUT /api/v1/devices/{uuid}/tags/{key}", h.setTag)
	op("DELETE /api/v1/devices/{uuid}/tags/{key}", h.deleteTag)
	op("GET /api/v1/devices/{uuid}/logs", h.deviceLogs)
	for _, kind := range []string{reeve.VarEnv, reeve.VarConfig} {
		op("GET /api/v1/"+kind, h.vars(kind))
		op("PUT /api/v1/"+kind, h.setVar(kind))
		op("DELETE /api/v1/"+kind, h.deleteVar(kind))
	}
	m.HandleFunc("/", h.notFound)
	return h
}

// OperatorRoutes lists the operator API's patterns ("GET /api/v1/fleets"),
// every one behind an operator token.
func (h *Handler) OperatorRoutes() []string { return append([]string(nil), h.opRoutes...) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Go's mux answers a known path with the wrong method itself, in
	// plain text; reeve answers every error in JSON.
	if _, pattern := h.mux.Handler(r); pattern == "/" && r.URL.Path != "/" {
		if allow := h.allowed(r); allow != "" {
			w.Header().Set("Allow", allow)
			httpx.WriteJSON(w, http.StatusMethodNotAllowed, httpx.ErrorBody{Error: reeve.Errorf(reeve.CodeInvalid,
				"%s is not allowed on %s: use %s", r.Method, r.URL.Path, allow)})
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

// allowed lists the methods the path answers to.
func (h *Handler) allowed(r *http.Request) string {
	var ms []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := h.mux.Handler(probe); p != "/" {
			ms = append(ms, m)
		}
	}
	return strings.Join(ms, ", ")
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	httpx.WriteError(w, h.log, reeve.Errorf(reeve.CodeNotFound, "no such route: %s %s (see docs/api.md)", r.Method, r.URL.Path))
}

func bearer(r *http.Request) string {
	v := r.Header.Get("Authorization")
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	var ve *reeve.ValidationError
	if errors.As(err, &ve) {
		err = ve.AsError()
	}
	httpx.WriteError(w, h.log, err)
}

// ---- device API ----

func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	var req RegisterRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		h.fail(w, err)
		return
	}
	d, err := h.s.Register(r.Context(), bearer(r), server.RegisterRequest(req))
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusCreated, d)
}

func (h *Handler) keyExchange(w http.ResponseWriter, r *http.Request) {
	var req KeyExchangeRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		h.fail(w, err)
		return
	}
	uuid := r.PathValue("uuid")
	if !reeve.ValidUUID(uuid) {
		h.fail(w, reeve.Errorf(reeve.CodeInvalid, "%q is not a device UUID", uuid))
		return
	}
	if err := h.s.KeyExchange(r.Context(), bearer(r), uuid, req.APIKey); err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (h *Handler) authDevice(r *http.Request, uuid string) (reeve.Device, error) {
	if !reeve.ValidUUID(uuid) {
		return reeve.Device{}, reeve.Errorf(reeve.CodeInvalid, "%q is not a device UUID: use 32 lowercase hex digits", uuid)
	}
	d, err := h.s.AuthDevice(r.Context(), uuid, bearer(r))
	if err == nil {
		h.s.Seen(uuid)
	}
	return d, err
}

func (h *Handler) state(w http.ResponseWriter, r *http.Request) {
	d, err := h.authDevice(r, r.PathValue("uuid"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxWait {
			h.fail(w, reeve.Errorf(reeve.CodeInvalid, "wait: %q is not a number of seconds from 1 to %d", v, MaxWait))
			return
		}
		wait = time.Duration(n) * time.Second
	}
	w.Header().Set(LongPollHeader, strconv.Itoa(MaxWait))
	inm := r.Header.Get("If-None-Match")
	var t server.Target
	changed := true
	if wait > 0 && inm != "" {
		t, changed, err = h.s.WaitTarget(r.Context(), d, inm, wait)
	} else {
		t, err = h.s.Poll(r.Context(), d)
		changed = t.ETag != inm
	}
	if err != nil {
		if r.Context().Err() != nil {
			return // the device went away
		}
		h.fail(w, err)
		return
	}
	w.Header().Set("ETag", t.ETag)
	w.Header().Set("Cache-Control", "no-cache")
	if !changed {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(t.Body)
}

func (h *Handler) report(w http.ResponseWriter, r *http.Request) {
	if bearer(r) == "" { // before reading a body from who knows whom
		h.fail(w, reeve.Errorf(reeve.CodeUnauthorized, "a device key is required: send Authorization: Bearer <device key>"))
		return
	}
	var cs reeve.CurrentState
	if err := httpx.DecodeJSON(w, r, MaxBody, &cs); err != nil {
		h.fail(w, err)
		return
	}
	uuid, err := h.s.ReportingDevice(r.Context(), bearer(r), cs)
	if err != nil {
		h.fail(w, err)
		return
	}
	d, err := h.authDevice(r, uuid)
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := h.s.Report(r.Context(), d, cs); err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// wireDependentRequest is RegisterDependentRequest as it arrives: app_id
// may be a JSON number or a string of digits.
type wireDependentRequest struct {
	AppID      json.RawMessage `json:"app_id"`
	DeviceType string          `json:"device_type"`
	LocalID    string          `json:"local_id"`
	Name       string          `json:"name"`
	UUID       string          `json:"uuid"`
}

func (h *Handler) registerDependent(w http.ResponseWriter, r *http.Request) {
	gw, err := h.authDevice(r, r.PathValue("uuid"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var req wireDependentRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		h.fail(w, err)
		return
	}
	appID, err := parseAppID(req.AppID)
	if err != nil {
		h.fail(w, err)
		return
	}
	d, err := h.s.RegisterDependent(r.Context(), gw, server.RegisterDependentRequest{
		AppID: appID, DeviceType: req.DeviceType, LocalID: req.LocalID, Name: req.Name, UUID: req.UUID,
	})
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusCreated, d)
}

// parseAppID reads an app id sent as a JSON number or a string of digits.
func parseAppID(raw json.RawMessage) (int64, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, reeve.Errorf(reeve.CodeInvalid, "app_id: missing: give the id of the dependent app in the gateway's target state")
	}
	if unq, err := strconv.Unquote(s); err == nil {
		s = unq
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, reeve.Errorf(reeve.CodeInvalid, "app_id: %s is not an app id: give the id (a positive number) of the dependent app in the gateway's target state", raw)
	}
	return id, nil
}

func (h *Handler) deviceTags(w http.ResponseWriter, r *http.Request) {
	d, err := h.authDevice(r, r.PathValue("uuid"))
	if err != nil {
		h.fail(w, err)
		return
	}
	tags, err := h.s.Tags(r.Context(), d)
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, DeviceTags{Tags: tags})
}

func (h *Handler) patchDeviceTags(w http.ResponseWriter, r *http.Request) {
	d, err := h.authDevice(r, r.PathValue("uuid"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var req PatchTagsRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		h.fail(w, err)
		return
	}
	if len(req.Tags) == 0 {
		h.fail(w, reeve.Errorf(reeve.CodeInvalid, "tags: nothing to change: give {\"tags\": {\"key\": \"value\"}} (null removes a tag)"))
		return
	}
	tags, err := h.s.PatchTags(r.Context(), d, req.Tags)
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, DeviceTags{Tags: tags})
}

// ---- operator API ----

type tokenKey struct{}

func (h *Handler) operator(fn func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t, err := h.s.AuthOperator(r.Context(), bearer(r))
		if err != nil {
			h.fail(w, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), tokenKey{}, t))
		if err := fn(w, r); err != nil {
			h.fail(w, err)
		}
	}
}

func ok(w http.ResponseWriter, status int, v any) error {
	if v == nil {
		w.WriteHeader(status)
		return nil
	}
	httpx.WriteJSON(w, status, v)
	return nil
}

func (h *Handler) whoami(w http.ResponseWriter, r *http.Request) error {
	t, _ := r.Context().Value(tokenKey{}).(reeve.Token)
	return ok(w, http.StatusOK, WhoAmI{Token: t, Version: reeve.Version})
}

func (h *Handler) createFleet(w http.ResponseWriter, r *http.Request) error {
	var req CreateFleetRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		return err
	}
	f, err := h.s.CreateFleet(r.Context(), server.CreateFleetRequest(req))
	if err != nil {
		return err
	}
	return ok(w, http.StatusCreated, f)
}

func (h *Handler) fleets(w http.ResponseWriter, r *http.Request) error {
	fs, err := h.s.Fleets(r.Context())
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, nonNil(fs))
}

func (h *Handler) fleet(w http.ResponseWriter, r *http.Request) error {
	f, err := h.s.Fleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, f)
}

func (h *Handler) updateFleet(w http.ResponseWriter, r *http.Request) error {
	var req UpdateFleetRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		return err
	}
	f, err := h.s.UpdateFleet(r.Context(), r.PathValue("fleet"), req.UpdateStrategy, req.PinnedRelease)
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, f)
}

func (h *Handler) deleteFleet(w http.ResponseWriter, r *http.Request) error {
	if err := h.s.DeleteFleet(r.Context(), r.PathValue("fleet")); err != nil {
		return err
	}
	return ok(w, http.StatusNoContent, nil)
}

func (h *Handler) createKey(w http.ResponseWriter, r *http.Request) error {
	var req CreateKeyRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		return err
	}
	key, k, err := h.s.CreateProvisioningKey(r.Context(), r.PathValue("fleet"), req.Name, req.ExpiresAt)
	if err != nil {
		return err
	}
	return ok(w, http.StatusCreated, CreatedKey{Key: key, ProvisioningKey: k})
}

func (h *Handler) keys(w http.ResponseWriter, r *http.Request) error {
	ks, err := h.s.ProvisioningKeys(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, nonNil(ks))
}

func (h *Handler) revokeKey(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return reeve.Errorf(reeve.CodeInvalid, "%q is not a key id: `reeve key ls --fleet F` shows them", r.PathValue("id"))
	}
	if err := h.s.RevokeProvisioningKey(r.Context(), id); err != nil {
		return err
	}
	return ok(w, http.StatusNoContent, nil)
}

func (h *Handler) push(w http.ResponseWriter, r *http.Request) error {
	var req PushRequest
	if err := httpx.DecodeJSON(w, r, MaxComposeBody, &req); err != nil {
		return err
	}
	rel, created, err := h.s.Push(r.Context(), r.PathValue("fleet"), []byte(req.Compose))
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return ok(w, status, rel)
}

func (h *Handler) releases(w http.ResponseWriter, r *http.Request) error {
	rs, err := h.s.Releases(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, nonNil(rs))
}

func (h *Handler) release(w http.ResponseWriter, r *http.Request) error {
	rel, err := h.s.Release(r.Context(), r.PathValue("fleet"), r.PathValue("commit"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, rel)
}

func (h *Handler) devices(w http.ResponseWriter, r *http.Request) error {
	ds, err := h.s.Devices(r.Context(), r.URL.Query().Get("fleet"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, nonNil(ds))
}

func (h *Handler) device(w http.ResponseWriter, r *http.Request) error {
	d, err := h.s.Device(r.Context(), r.PathValue("uuid"))
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, d)
}

func (h *Handler) updateDevice(w http.ResponseWriter, r *http.Request) error {
	var req UpdateDeviceRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		return err
	}
	if req.Name == nil && req.PinnedRelease == nil {
		return reeve.Errorf(reeve.CodeInvalid, "nothing to change: give name or pinned_release")
	}
	d, err := h.s.UpdateDevice(r.Context(), r.PathValue("uuid"), req.Name, req.PinnedRelease)
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, d)
}

func (h *Handler) deleteDevice(w http.ResponseWriter, r *http.Request) error {
	if err := h.s.DeleteDevice(r.Context(), r.PathValue("uuid")); err != nil {
		return err
	}
	return ok(w, http.StatusNoContent, nil)
}

func (h *Handler) revokeDeviceKey(w http.ResponseWriter, r *http.Request) error {
	if err := h.s.RevokeDeviceKey(r.Context(), r.PathValue("uuid")); err != nil {
		return err
	}
	return ok(w, http.StatusNoContent, nil)
}

func (h *Handler) setTag(w http.ResponseWriter, r *http.Request) error {
	var req TagRequest
	if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
		return err
	}
	d, err := h.s.SetTag(r.Context(), r.PathValue("uuid"), r.PathValue("key"), req.Value, false)
	if err != nil {
		return err
	}
	return ok(w, http.StatusOK, d)
}

func (h *Handler) deleteTag(w http.ResponseWriter, r *http.Request) error {
	if _, err := h.s.SetTag(r.Context(), r.PathValue("uuid"), r.PathValue("key"), "", true); err != nil {
		return err
	}
	return ok(w, http.StatusNoContent, nil)
}

func scopeOf(r *http.Request) server.VarScope {
	q := r.URL.Query()
	return server.VarScope{Fleet: q.Get("fleet"), Device: q.Get("device"), Service: q.Get("service")}
}

func (h *Handler) vars(kind string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		vs, err := h.s.Vars(r.Context(), kind, scopeOf(r))
		if err != nil {
			return err
		}
		return ok(w, http.StatusOK, nonNil(vs))
	}
}

func (h *Handler) setVar(kind string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		var req SetVarRequest
		if err := httpx.DecodeJSON(w, r, MaxBody, &req); err != nil {
			return err
		}
		v, err := h.s.SetVar(r.Context(), kind, server.VarScope{Fleet: req.Fleet, Device: req.Device, Service: req.Service}, req.Name, req.Value)
		if err != nil {
			return err
		}
		return ok(w, http.StatusOK, v)
	}
}

func (h *Handler) deleteVar(kind string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		name := r.URL.Query().Get("name")
		if name == "" {
			return reeve.Errorf(reeve.CodeInvalid, "name: say which variable to remove (?name=…)")
		}
		if err := h.s.DeleteVar(r.Context(), kind, scopeOf(r), name); err != nil {
			return err
		}
		return ok(w, http.StatusNoContent, nil)
	}
}

// nonNil makes empty lists [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
