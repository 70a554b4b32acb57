// Package localapi is the agent's HTTP API on the device: health, status,
// the balena-compatible supervisor routes (supervisor.go), and in local mode
// the target state itself. Every route but GET /ping and GET /v1/healthy
// needs an API key (auth.go). Client is its typed client, used by the CLI.
package localapi

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/agent"
	"reeve.dev/reeve/internal/fleetlink"
	"reeve.dev/reeve/internal/httpx"
	"reeve.dev/reeve/internal/logship"
)

// MaxTargetBytes bounds a target state sent to the agent.
const MaxTargetBytes = 4 << 20

// Agent is what the API needs of the agent.
type Agent interface {
	UUID() string
	DeviceName() string
	DeviceType() string
	Target() (reeve.TargetState, int64)
	SetTarget(ctx context.Context, ts reeve.TargetState) (int64, error)
	Status() agent.Status
	Healthy() error

	// Keys. APIKey is the device-wide key; AppForKey says which app an
	// app-scoped key belongs to (ok false: not an app key).
	APIKey() string
	AppForKey(key string) (appUUID string, ok bool)
	RegenerateAPIKey(ctx context.Context) (string, error) // new device-wide key; the old one stops working

	// Actions. Errors carry reeve codes: locked (a user holds an update lock
	// of the app and force is false), not_found (unknown app/service).
	// They return once the action is done (the containers are gone / stopped / running again).
	RestartApp(ctx context.Context, appUUID string, force bool) error
	PurgeApp(ctx context.Context, appUUID string, force bool) error // restart + its volumes wiped; images kept
	StopApp(ctx context.Context, appUUID string, force bool) error
	StartApp(ctx context.Context, appUUID string) error
	RestartService(ctx context.Context, appUUID, service string, force bool) error
	StopService(ctx context.Context, appUUID, service string, force bool) error
	StartService(ctx context.Context, appUUID, service string) error
	AppLocked(appUUID string) bool                        // a user holds an update lock of one of the app's services, and the device config does not override locks
	CleanupVolumes(ctx context.Context) ([]string, error) // removes volumes no app of the target uses; returns their names
}

// Options configures the API.
type Options struct {
	// Local allows setting the target state through the API.
	Local  bool
	Logger *slog.Logger
	// Link, when the agent has a fleet server, tells how the connection
	// to it is doing.
	Link func() fleetlink.LinkStatus
	// LocalMode, when the agent has a fleet server, says whether the fleet
	// put the device in local mode: the local target routes are open then.
	LocalMode func() bool
	// LinkHealthy, when the agent has a fleet server, says whether its
	// polling is stuck; GET /v1/healthy fails then.
	LinkHealthy func() error
	// Update asks the fleet link to poll now (POST /v1/update). Nil: the
	// route answers 503 (local mode has nothing to poll).
	Update func(force bool)
	// Reboot and Shutdown run the host command (POST /v1/reboot,
	// /v1/shutdown). Nil: the route answers 503.
	Reboot   func(ctx context.Context) error
	Shutdown func(ctx context.Context) error
	// Tags reads and PatchTags changes the device's tags on its fleet
	// server (GET and PATCH /v2/device/tags). Nil: 503 (local mode).
	Tags      func(ctx context.Context) (reeve.Tags, error)
	PatchTags func(ctx context.Context, patch map[string]*string) (reeve.Tags, error)
	// Logs is the agent's in-memory view of its log (GET /v2/local/logs).
	// Nil: 503.
	Logs *logship.Tail
	// LogStatus, when the agent ships its log, says how that is doing
	// (in GET /v2/state/status).
	LogStatus func() *logship.Status
	// Dependents keeps the dependent devices the agent carries (the
	// /v1/devices and /v1/dependent-apps routes). Nil: those answer 503.
	Dependents Dependents
}

// Server serves the local API.
type Server struct {
	agent Agent
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
}

// handler serves one route for an authorized caller.
type handler func(w http.ResponseWriter, r *http.Request, c caller)

// New returns the API for an agent.
func New(a Agent, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{agent: a, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	routes := []struct {
		method, path string
		need         access
		h            handler
	}{
		{"GET", "/ping", public, s.ping},
		{"GET", "/v1/healthy", public, s.healthy},
		{"GET", "/v2/version", anyKey, s.version},
		{"GET", "/v2/state/status", anyKey, s.status},
		{"GET", "/v2/local/device-info", anyKey, s.deviceInfo},
		{"GET", "/v2/local/target-state", deviceKey, s.getTarget},
		{"POST", "/v2/local/target-state", deviceKey, s.setTarget},
		{"GET", "/v2/local/logs", deviceKey, s.logs},

		// balena's supervisor API v1.
		{"POST", "/v1/update", anyKey, s.update},
		{"POST", "/v1/restart", anyKey, s.v1Restart},
		{"POST", "/v1/purge", anyKey, s.v1Purge},
		{"GET", "/v1/apps/{appId}", anyKey, s.v1App},
		{"POST", "/v1/apps/{appId}/stop", anyKey, s.v1Stop},
		{"POST", "/v1/apps/{appId}/start", anyKey, s.v1Start},
		{"GET", "/v1/device", anyKey, s.v1Device},
		{"POST", "/v1/regenerate-api-key", deviceKey, s.regenerateKey},
		{"POST", "/v1/reboot", deviceKey, s.hostAction("reboot", opts.Reboot)},
		{"POST", "/v1/shutdown", deviceKey, s.hostAction("shutdown", opts.Shutdown)},

		// balena's supervisor API v2.
		{"GET", "/v2/applications/state", anyKey, s.appsState},
		{"GET", "/v2/applications/{appId}/state", anyKey, s.appState},
		{"POST", "/v2/applications/{appId}/restart", anyKey, s.v2Restart},
		{"POST", "/v2/applications/{appId}/purge", anyKey, s.v2Purge},
		{"POST", "/v2/applications/{appId}/restart-service", anyKey, s.serviceAction(actRestart)},
		{"POST", "/v2/applications/{appId}/stop-service", anyKey, s.serviceAction(actStop)},
		{"POST", "/v2/applications/{appId}/start-service", anyKey, s.serviceAction(actStart)},
		{"GET", "/v2/device/name", anyKey, s.deviceName},
		{"GET", "/v2/device/tags", anyKey, s.deviceTags},
		{"PATCH", "/v2/device/tags", anyKey, s.patchDeviceTags},
		{"GET", "/v2/cleanup-volumes", deviceKey, s.cleanupVolumes},

		// Dependent devices (dependent.go), for the gateway application.
		{"GET", "/v1/devices", anyKey, s.dep(dependentDevices)},
		{"POST", "/v1/devices", anyKey, s.dep(provisionDependent)},
		{"GET", "/v1/devices/{uuid}", anyKey, s.dep(dependentDevice)},
		{"PUT", "/v1/devices/{uuid}", anyKey, s.dep(updateDependent)},
		{"POST", "/v1/devices/{uuid}/logs", anyKey, s.dep(dependentLogs)},
		{"GET", "/v1/dependent-apps", anyKey, s.dep(dependentApps)},
		{"GET", "/v1/dependent-apps/{appId}/assets/{commit}", anyKey, s.dep(dependentAssets)},
	}
	// paths answers a request whose path is a route's but whose method is
	// not: 405 with the methods that are.
	paths := http.NewServeMux()
	allowed := map[string][]string{}
	for _, rt := range routes {
		need, h := rt.need, rt.h
		s.mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			if c, ok := s.authorize(w, r, need); ok {
				h(w, r, c)
			}
		})
		if allowed[rt.path] == nil {
			path := rt.path
			paths.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
				methods := allowed[path]
				w.Header().Set("Allow", strings.Join(methods, ", "))
				httpx.WriteJSON(w, http.StatusMethodNotAllowed, httpx.ErrorBody{Error: reeve.Errorf(reeve.CodeInvalid,
					"%s is not allowed on %s: use %s", r.Method, r.URL.Path, strings.Join(methods, " or "))})
			})
		}
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := paths.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		// Keys first, as balena's supervisor does: a gateway application
		// checks that the agent is up with GET / and expects 401.
		if _, ok := s.authorize(w, r, anyKey); !ok {
			return
		}
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeNotFound, "no route %s %s: see docs/api.md for the routes", r.Method, r.URL.Path))
	})
	return s
}

// local reports whether the target is set through this API: local mode
// by flag, or by the fleet's device config.
func (s *Server) local() bool {
	return s.opts.Local || (s.opts.LocalMode != nil && s.opts.LocalMode())
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) ping(w http.ResponseWriter, _ *http.Request, _ caller) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("OK"))
}

func (s *Server) healthy(w http.ResponseWriter, _ *http.Request, _ caller) {
	err := s.agent.Healthy()
	if err == nil && s.opts.LinkHealthy != nil {
		err = s.opts.LinkHealthy()
	}
	if err != nil {
		httpx.WriteJSON(w, http.StatusInternalServerError, httpx.ErrorBody{Error: &reeve.Error{Code: reeve.CodeUnavailable, Message: err.Error()}})
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("OK"))
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request, _ caller) {
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "success", "version": reeve.Version})
}

// StatusResponse is the body of GET /v2/state/status.
type StatusResponse struct {
	Result string `json:"status"` // "success"
	agent.Status
	// Fleet is the link to the fleet server; absent in local mode.
	Fleet *fleetlink.LinkStatus `json:"fleet,omitempty"`
	// Logs says how shipping the device's log to the fleet server is
	// doing; absent without a fleet server.
	Logs *logship.Status `json:"logs,omitempty"`
}

// status answers with what the agent is doing; an app's key sees only its
// own app's services, and no steps (they name other apps).
func (s *Server) status(w http.ResponseWriter, _ *http.Request, c caller) {
	resp := StatusResponse{Result: "success", Status: s.agent.Status()}
	if c.scoped() {
		var own []agent.ServiceStatus
		for _, svc := range resp.Services {
			if c.sees(svc.AppUUID) {
				own = append(own, svc)
			}
		}
		resp.Services, resp.Steps = own, nil
	}
	if s.opts.Link != nil {
		ls := s.opts.Link()
		resp.Fleet = &ls
	}
	if s.opts.LogStatus != nil {
		resp.Logs = s.opts.LogStatus()
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// DeviceInfo is the body of GET /v2/local/device-info.
type DeviceInfo struct {
	Status     string `json:"status"`
	UUID       string `json:"uuid"`
	Name       string `json:"name"`
	DeviceType string `json:"device_type"`
	Local      bool   `json:"local_mode"`
	Version    string `json:"version"`
}

func (s *Server) deviceInfo(w http.ResponseWriter, _ *http.Request, _ caller) {
	httpx.WriteJSON(w, http.StatusOK, DeviceInfo{Status: "success", UUID: s.agent.UUID(), Name: s.agent.DeviceName(),
		DeviceType: s.agent.DeviceType(), Local: s.local(), Version: reeve.Version})
}

// TargetResponse is the body of GET /v2/local/target-state.
type TargetResponse struct {
	Status  string            `json:"status"`
	Version int64             `json:"version"`
	State   reeve.TargetState `json:"state"`
}

func (s *Server) getTarget(w http.ResponseWriter, _ *http.Request, _ caller) {
	ts, v := s.agent.Target()
	httpx.WriteJSON(w, http.StatusOK, TargetResponse{Status: "success", Version: v, State: ts})
}

// SetTargetResponse is the body of a successful POST /v2/local/target-state.
type SetTargetResponse struct {
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

func (s *Server) setTarget(w http.ResponseWriter, r *http.Request, _ caller) {
	if !s.local() {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeForbidden, "local mode is off: the fleet server sets this device's target; start the agent with --local, or set REEVE_SUPERVISOR_LOCAL_MODE=1 for the device on its fleet server, to set it here"))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeInvalid, "the body must be a JSON target state: send Content-Type: application/json, not %q", ct))
		return
	}
	body, err := httpx.ReadBody(w, r, MaxTargetBytes)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	ts, err := reeve.ParseTargetState(body)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	v, err := s.agent.SetTarget(r.Context(), ts)
	if err != nil {
		httpx.WriteError(w, s.log, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, SetTargetResponse{Status: "success", Version: v})
}
