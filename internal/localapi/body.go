package localapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/httpx"
)

// maxActionBytes bounds the body of a supervisor route ({appId, force, …}).
const maxActionBytes = 64 << 10

// decodeBody reads a supervisor route's JSON body into v, refusing unknown
// fields. An empty body is an empty object: balena's clients send none to
// POST /v1/reboot, /v1/apps/{appId}/stop and the like.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := httpx.ReadBody(w, r, maxActionBytes)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return httpx.DecodeJSON(w, r, maxActionBytes, v)
}

// The fields below are read as balena's supervisor reads them, so that
// its clients work unchanged: an ID may be a JSON number or a string of
// digits, and force may be true/false, "true"/"false", 1/0, "1"/"0" or
// "on"/"off". Anything else is refused with 400 naming the field.

// positiveInt reads an integer ID given as text (a path segment, or a JSON
// string's content).
func positiveInt(field, s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return 0, reeve.Errorf(reeve.CodeInvalid, "%s must be a positive integer, not %q", field, s)
	}
	return n, nil
}

// jsonID reads an ID field of a body; ok is false when it is absent or null.
func jsonID(field string, raw json.RawMessage) (id int64, ok bool, err error) {
	if isNull(raw) {
		return 0, false, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		id, err = positiveInt(field, s)
		return id, err == nil, err
	}
	id, err = positiveInt(field, string(raw))
	return id, err == nil, err
}

// jsonFlag reads a boolean field of a body; absent or null is false.
func jsonFlag(field string, raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	v := strings.TrimSpace(string(raw))
	var s string
	if json.Unmarshal(raw, &s) == nil {
		v = s
	}
	switch strings.ToLower(v) {
	case "true", "1", "on":
		return true, nil
	case "false", "0", "off":
		return false, nil
	}
	return false, reeve.Errorf(reeve.CodeInvalid, "%s must be true or false, not %s", field, strings.TrimSpace(string(raw)))
}

// jsonString reads a string field of a body; absent or null is "".
func jsonString(field string, raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reeve.Errorf(reeve.CodeInvalid, "%s must be a string, not %s", field, strings.TrimSpace(string(raw)))
	}
	return s, nil
}

func isNull(raw json.RawMessage) bool {
	v := bytes.TrimSpace(raw)
	return len(v) == 0 || string(v) == "null"
}

// forceBody is the body of the routes that take only {"force"}.
type forceBody struct {
	Force json.RawMessage `json:"force"`
}

// readForce reads a {"force"} body.
func readForce(w http.ResponseWriter, r *http.Request) (bool, error) {
	var b forceBody
	if err := decodeBody(w, r, &b); err != nil {
		return false, err
	}
	return jsonFlag("force", b.Force)
}

// noBody refuses a body with any field, for routes that take none.
func noBody(w http.ResponseWriter, r *http.Request) error {
	var b struct{}
	return decodeBody(w, r, &b)
}
