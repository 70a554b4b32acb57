package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/dependent"
	"reeve.dev/reeve/internal/httpx"
)

// Dependents is what the dependent-device routes need (dependent.Manager).
type Dependents interface {
	Apps(ctx context.Context) ([]dependent.App, error)
	Devices(ctx context.Context) ([]dependent.Device, error)
	Device(ctx context.Context, uuid string) (dependent.Device, error)
	Provision(ctx context.Context, req dependent.ProvisionRequest) (dependent.Device, error)
	Update(ctx context.Context, uuid string, p dependent.Patch) (dependent.Device, error)
	Log(ctx context.Context, uuid string, lines []dependent.LogEntry) error
	Assets(ctx context.Context, appID int64, commit string) (*os.File, error)
}

// maxDependentLogBytes bounds one POST /v1/devices/{uuid}/logs.
const maxDependentLogBytes = 1 << 20

// depRoute is a dependent-device route: it answers status with out as
// JSON (out nil: no body), or an error; status 0 with no error says it
// wrote the answer itself.
type depRoute func(w http.ResponseWriter, r *http.Request, d Dependents) (status int, out any, err error)

// dep serves a dependent-device route: 503 without a dependent-device
// store, errors as JSON.
func (s *Server) dep(fn depRoute) handler {
	return func(w http.ResponseWriter, r *http.Request, _ caller) {
		if s.opts.Dependents == nil {
			httpx.WriteError(w, s.log, reeve.Errorf(reeve.CodeUnavailable, "this agent carries no dependent devices"))
			return
		}
		status, out, err := fn(w, r, s.opts.Dependents)
		switch {
		case err != nil:
			httpx.WriteError(w, s.log, err)
		case status == 0: // answered by fn
		case out == nil:
			w.WriteHeader(status)
		default:
			httpx.WriteJSON(w, status, out)
		}
	}
}

func dependentApps(_ http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	apps, err := d.Apps(r.Context())
	return http.StatusOK, apps, err
}

func dependentAssets(w http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	appID, err := positiveInt("appId", r.PathValue("appId"))
	if err != nil {
		return 0, nil, err
	}
	commit := r.PathValue("commit")
	f, err := d.Assets(r.Context(), appID, commit)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	name := filepath.Base(f.Name())
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	// The tar of a commit never changes: its name is its ETag, and ranges
	// let a gateway resume a download over a poor link.
	w.Header().Set("ETag", fmt.Sprintf(`"%d-%s"`, appID, commit))
	http.ServeContent(w, r, name, st.ModTime(), f)
	return 0, nil, nil
}

func dependentDevices(_ http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	devs, err := d.Devices(r.Context())
	out := make([]dependent.Device, 0, len(devs))
	for _, dev := range devs {
		if !dev.MarkedForDeletion {
			out = append(out, dev)
		}
	}
	return http.StatusOK, out, err
}

func dependentDevice(_ http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	dev, err := d.Device(r.Context(), r.PathValue("uuid"))
	return http.StatusOK, dev, err
}

func provisionDependent(w http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	var body map[string]json.RawMessage
	if err := decodeBody(w, r, &body); err != nil {
		return 0, nil, err
	}
	appID, ok, err := jsonID("appId", body["appId"])
	if err == nil && !ok {
		err = reeve.Errorf(reeve.CodeInvalid, "appId must be a positive integer: name the dependent app the device joins (GET /v1/dependent-apps lists them)")
	}
	if err != nil {
		return 0, nil, err
	}
	req := dependent.ProvisionRequest{AppID: appID}
	var problems []string
	for field, dst := range map[string]*string{"device_type": &req.DeviceType, "local_id": &req.LocalID, "name": &req.Name} {
		v, err := jsonString(field, body[field])
		if err == nil && len(v) > 256 {
			err = fmt.Errorf("%s must be at most 256 bytes", field)
		}
		if err != nil {
			problems = append(problems, err.Error())
		}
		*dst = v
	}
	if len(problems) > 0 {
		return 0, nil, reeve.Errorf(reeve.CodeInvalid, "%s", strings.Join(slices.Sorted(slices.Values(problems)), "; "))
	}
	dev, err := d.Provision(r.Context(), req)
	return http.StatusCreated, dev, err
}

func updateDependent(w http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	var body map[string]json.RawMessage
	if err := decodeBody(w, r, &body); err != nil {
		return 0, nil, err
	}
	p, err := parsePatch(body)
	if err != nil {
		return 0, nil, err
	}
	dev, err := d.Update(r.Context(), r.PathValue("uuid"), p)
	return http.StatusOK, dev, err
}

func dependentLogs(w http.ResponseWriter, r *http.Request, d Dependents) (int, any, error) {
	body, err := httpx.ReadBody(w, r, maxDependentLogBytes)
	if err != nil {
		return 0, nil, err
	}
	lines, err := parseDependentLogs(body)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusAccepted, nil, d.Log(r.Context(), r.PathValue("uuid"), lines)
}

// parsePatch reads PUT /v1/devices/{uuid}: every field is checked, and
// every wrong one named.
func parsePatch(body map[string]json.RawMessage) (dependent.Patch, error) {
	var (
		p        dependent.Patch
		problems []string
	)
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for field, raw := range body {
		if isNull(raw) {
			continue
		}
		switch field {
		case "status":
			var v string
			if json.Unmarshal(raw, &v) != nil || len(v) > 256 || !utf8.ValidString(v) {
				bad("status must be a string of at most 256 bytes, such as \"Idle\" or \"Updating\"")
			} else {
				p.Status = &v
			}
		case "is_online":
			var v bool
			if json.Unmarshal(raw, &v) != nil {
				bad("is_online must be a boolean (true or false), not %s", short(raw))
			} else {
				p.IsOnline = &v
			}
		case "commit":
			var v string
			if json.Unmarshal(raw, &v) != nil || len(v) > 64 {
				bad("commit must be a string of at most 64 characters: the release the device runs")
			} else {
				p.Commit = &v
			}
		case "releaseId":
			id, _, err := jsonID("releaseId", raw)
			if err != nil {
				bad("%v", err)
			} else {
				p.ReleaseID = &id
			}
		case "environment", "config":
			var v map[string]string
			if json.Unmarshal(raw, &v) != nil {
				bad("%s must be an object of strings, such as {\"VAR\": \"value\"}", field)
				continue
			}
			if v == nil {
				v = map[string]string{}
			}
			if field == "environment" {
				p.Environment = v
			} else {
				p.Config = v
			}
		}
	}
	if len(problems) > 0 {
		return p, reeve.Errorf(reeve.CodeInvalid, "%s", strings.Join(slices.Sorted(slices.Values(problems)), "; "))
	}
	return p, nil
}

// parseDependentLogs reads one line {message, timestamp, isSystem} or an
// array of them. timestamp is unix milliseconds (as JavaScript's
// Date.now() gives) or an RFC 3339 string; absent, the time of arrival.
func parseDependentLogs(body []byte) ([]dependent.LogEntry, error) {
	var raws []map[string]json.RawMessage
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, reeve.Errorf(reeve.CodeInvalid, "the body must be a log line {\"message\": \"...\"} or an array of them: %v", err)
		}
	} else {
		var one map[string]json.RawMessage
		if err := json.Unmarshal(body, &one); err != nil || one == nil {
			return nil, reeve.Errorf(reeve.CodeInvalid, "the body must be a log line {\"message\": \"...\", \"timestamp\": <unix ms>, \"isSystem\": false} or an array of them")
		}
		raws = append(raws, one)
	}
	out := make([]dependent.LogEntry, 0, len(raws))
	for i, raw := range raws {
		at := ""
		if len(raws) > 1 {
			at = fmt.Sprintf("line %d: ", i)
		}
		var l dependent.LogEntry
		if json.Unmarshal(raw["message"], &l.Message) != nil {
			return nil, reeve.Errorf(reeve.CodeInvalid, "%smessage must be a string", at)
		}
		if !isNull(raw["isSystem"]) && json.Unmarshal(raw["isSystem"], &l.System) != nil {
			return nil, reeve.Errorf(reeve.CodeInvalid, "%sisSystem must be a boolean", at)
		}
		if ts := raw["timestamp"]; !isNull(ts) {
			var ms float64
			var text string
			switch {
			case json.Unmarshal(ts, &ms) == nil && ms >= 0 && ms < math.MaxInt64/1e6:
				l.Timestamp = time.UnixMilli(int64(ms)).UTC()
			case json.Unmarshal(ts, &text) == nil:
				t, err := time.Parse(time.RFC3339Nano, text)
				if err != nil {
					return nil, reeve.Errorf(reeve.CodeInvalid, "%stimestamp must be unix milliseconds or an RFC 3339 time, not %q", at, text)
				}
				l.Timestamp = t.UTC()
			default:
				return nil, reeve.Errorf(reeve.CodeInvalid, "%stimestamp must be unix milliseconds or an RFC 3339 time", at)
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// short returns a JSON value for a message, cut to a readable length.
func short(raw json.RawMessage) string {
	s := string(raw)
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return s
}
