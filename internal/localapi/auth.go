package localapi

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// access says which keys a route accepts.
type access int

const (
	// public routes need no key: GET /ping and GET /v1/healthy.
	public access = iota
	// anyKey routes take the device-wide key or an app's key. Routes that
	// name an appId also check that an app key names its own app; routes
	// that list apps show an app key only its own.
	anyKey
	// deviceKey routes act on the whole device and take only the
	// device-wide key.
	deviceKey
)

// caller is who sent a request: the holder of the device-wide key (App
// empty) or of one app's key.
type caller struct {
	App string // the app UUID of an app-scoped key
}

// scoped reports whether the caller holds an app's key.
func (c caller) scoped() bool { return c.App != "" }

// sees reports whether the caller may see or act on the app.
func (c caller) sees(appUUID string) bool { return !c.scoped() || c.App == appUUID }

// requestKey returns the key sent with the request, as balena's supervisor
// takes it: ?apikey=K first, else Authorization: Bearer K (or ApiKey K).
func requestKey(r *http.Request) string {
	if k := r.URL.Query().Get("apikey"); k != "" {
		return k
	}
	scheme, k, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || (!strings.EqualFold(scheme, "Bearer") && !strings.EqualFold(scheme, "ApiKey")) {
		return ""
	}
	return strings.TrimSpace(k)
}

// authorize says who sent the request, or writes the refusal and returns
// ok false.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, need access) (caller, bool) {
	if need == public {
		return caller{}, true
	}
	key := requestKey(r)
	if key == "" {
		unauthorized(w, s, "this route needs the agent's API key: send it as Authorization: Bearer <key> or ?apikey=<key>")
		return caller{}, false
	}
	var c caller
	if dev := s.agent.APIKey(); dev == "" || subtle.ConstantTimeCompare([]byte(dev), []byte(key)) != 1 {
		app, ok := s.agent.AppForKey(key)
		if !ok {
			unauthorized(w, s, "the API key is not valid: it may have been regenerated (POST /v1/regenerate-api-key), or belong to an app that is no longer on this device")
			return caller{}, false
		}
		c.App = app
	}
	if need == deviceKey && c.scoped() {
		httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeForbidden,
			"%s %s acts on the whole device: it needs the device-wide API key, not an app's key", r.Method, r.URL.Path))
		return caller{}, false
	}
	return c, true
}

func unauthorized(w http.ResponseWriter, s *Server, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="reeve agent"`)
	httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeUnauthorized, "%s", msg))
}
