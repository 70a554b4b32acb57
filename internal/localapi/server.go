// Package localapi is the agent's HTTP API on the device: health, status,
// and in local mode the target state itself. Client is its typed client, used
// by the CLI.
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
}

// Options configures the API.
type Options struct {
	// Local allows setting the target state through the API.
	Local  bool
	Logger *slog.Logger
	// Link, when the agent has a fleet server, tells how the connection
	// to it is doing.
	Link func() fleetlink.LinkStatus
}

// Server serves the local API.
type Server struct {
	agent Agent
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
}

// New returns the API for an agent.
func New(a Agent, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{agent: a, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	routes := []struct {
		method, path string
		h            http.HandlerFunc
	}{
		{"GET", "/ping", s.ping},
		{"GET", "/v1/healthy", s.healthy},
		{"GET", "/v2/version", s.version},
		{"GET", "/v2/state/status", s.status},
		{"GET", "/v2/local/device-info", s.deviceInfo},
		{"GET", "/v2/local/target-state", s.getTarget},
		{"POST", "/v2/local/target-state", s.setTarget},
	}
	allowed := map[string][]string{}
	for _, r := range routes {
		s.mux.HandleFunc(r.method+" "+r.path, r.h)
		allowed[r.path] = append(allowed[r.path], r.method)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if methods, ok := allowed[r.URL.Path]; ok {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			httpx.WriteJSON(w, http.StatusMethodNotAllowed, httpx.ErrorBody{Error: reeve.Errorf(reeve.CodeInvalid,
				"%s is not allowed on %s: use %s", r.Method, r.URL.Path, strings.Join(methods, " or "))})
			return
		}
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeNotFound, "no route %s %s: see docs/api.md for the routes", r.Method, r.URL.Path))
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) ping(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("OK"))
}

func (s *Server) healthy(w http.ResponseWriter, _ *http.Request) {
	if err := s.agent.Healthy(); err != nil {
		httpx.WriteJSON(w, http.StatusInternalServerError, httpx.ErrorBody{Error: &reeve.Error{Code: reeve.CodeUnavailable, Message: err.Error()}})
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("OK"))
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "success", "version": reeve.Version})
}

// StatusResponse is the body of GET /v2/state/status.
type StatusResponse struct {
	Result string `json:"status"` // "success"
	agent.Status
	// Fleet is the link to the fleet server; absent in local mode.
	Fleet *fleetlink.LinkStatus `json:"fleet,omitempty"`
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	resp := StatusResponse{Result: "success", Status: s.agent.Status()}
	if s.opts.Link != nil {
		ls := s.opts.Link()
		resp.Fleet = &ls
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

func (s *Server) deviceInfo(w http.ResponseWriter, _ *http.Request) {
	httpx.WriteJSON(w, http.StatusOK, DeviceInfo{Status: "success", UUID: s.agent.UUID(), Name: s.agent.DeviceName(),
		DeviceType: s.agent.DeviceType(), Local: s.opts.Local, Version: reeve.Version})
}

// TargetResponse is the body of GET /v2/local/target-state.
type TargetResponse struct {
	Status  string            `json:"status"`
	Version int64             `json:"version"`
	State   reeve.TargetState `json:"state"`
}

func (s *Server) getTarget(w http.ResponseWriter, _ *http.Request) {
	ts, v := s.agent.Target()
	httpx.WriteJSON(w, http.StatusOK, TargetResponse{Status: "success", Version: v, State: ts})
}

// SetTargetResponse is the body of a successful POST /v2/local/target-state.
type SetTargetResponse struct {
	Status  string `json:"status"`
	Version int64  `json:"version"`
}

func (s *Server) setTarget(w http.ResponseWriter, r *http.Request) {
	if !s.opts.Local {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeForbidden, "local mode is off: the fleet server sets this device's target; start the agent with --local to set it here"))
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
