// Package httpx holds what every reeve HTTP API shares: JSON responses,
// the one table from error codes to status codes, and bounded body decoding.
package httpx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"reeve.dev/reeve"
)

// StatusOf maps an error code to an HTTP status.
func StatusOf(code string) int {
	switch code {
	case reeve.CodeInvalid:
		return http.StatusBadRequest
	case reeve.CodeUnauthorized:
		return http.StatusUnauthorized
	case reeve.CodeForbidden:
		return http.StatusForbidden
	case reeve.CodeNotFound:
		return http.StatusNotFound
	case reeve.CodeGone:
		return http.StatusGone
	case reeve.CodeConflict:
		return http.StatusConflict
	case reeve.CodeLocked:
		return http.StatusLocked
	case reeve.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case reeve.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error *reeve.Error `json:"error"`
}

// WriteJSON writes v as JSON with the status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes err as {"error":{"code","message"}}. Errors without a
// code are internal: their text is logged, and the client is told so.
func WriteError(w http.ResponseWriter, log *slog.Logger, err error) {
	var e *reeve.Error
	var v *reeve.ValidationError
	switch {
	case errors.As(err, &v):
		e = v.AsError()
	case errors.As(err, &e):
	default:
		if log != nil {
			log.Error("request failed", "err", err)
		}
		e = &reeve.Error{Code: reeve.CodeInternal, Message: err.Error()}
	}
	WriteJSON(w, StatusOf(e.Code), ErrorBody{Error: e})
}

// DecodeJSON reads a JSON body of at most limit bytes into v, refusing
// unknown fields or trailing data. Its errors are *reeve.Error with code
// invalid, or too_large for a body over the limit.
func DecodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	// The Content-Type is not checked: curl -d sends a form type, and a
	// body that is not JSON gets a clear error from the decoder anyway.
	body, err := ReadBody(w, r, limit)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return reeve.Errorf(reeve.CodeInvalid, "the body is not valid JSON for this request: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return reeve.Errorf(reeve.CodeInvalid, "the body holds more than one JSON value: send exactly one")
	}
	return nil
}

// ReadBody reads a body of at most limit bytes.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, reeve.Errorf(reeve.CodeTooLarge, "the body is larger than the limit of %d bytes", limit)
		}
		return nil, reeve.Errorf(reeve.CodeInvalid, "read body: %v", err)
	}
	return body, nil
}

// DecodeError reads an error response from a reeve API into an error.
func DecodeError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb ErrorBody
	if err := json.Unmarshal(body, &eb); err == nil && eb.Error != nil {
		if len(eb.Error.Details) > 0 {
			return &reeve.ValidationError{Problems: eb.Error.Details}
		}
		return eb.Error
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// Shutdown stops srv: it stops accepting, lets requests in flight finish
// for up to grace, then closes what is left. Running out of grace is not a
// failure of the caller: a client may hold a connection it never sends on
// (the server counts it as busy for its first seconds), or a stream may not
// end by itself; it is logged.
func Shutdown(srv *http.Server, grace time.Duration, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		log.Info("closing connections still open after the shutdown grace", "grace", grace)
		err = srv.Close()
	}
	return err
}
