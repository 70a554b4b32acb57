// Package engine decides what to do: Plan compares the current state with
// the target and returns the next batch of steps. It does no I/O, so every
// rule is tested by table tests without a runtime.
package engine

import (
	"fmt"
	"time"

	"reeve.dev/reeve"
)

// Action names a kind of step.
type Action string

// The steps the planner emits and the executor carries out.
const (
	ActionFetch          Action = "fetch"          // pull Image
	ActionKill           Action = "kill"           // stop and remove Current
	ActionStop           Action = "stop"           // stop Current, keep it
	ActionStart          Action = "start"          // create Target if no container matches, then start it (Current set when one exists)
	ActionRemove         Action = "remove"         // remove Current (not running)
	ActionUpdateMetadata Action = "updateMetadata" // move Current to Target's commit, no restart
	ActionRestart        Action = "restart"        // stop and start Current
	ActionHandover       Action = "handover"       // end a hand-over: Target's container has taken over (or its time is up), kill Current
	ActionCreateNetwork  Action = "createNetwork"  // create Network
	ActionRemoveNetwork  Action = "removeNetwork"  // remove Network
	ActionCreateVolume   Action = "createVolume"   // create Volume, or give it a new definition keeping data when Replace
	ActionRemoveVolume   Action = "removeVolume"   // remove Volume
	ActionRemoveImage    Action = "removeImage"    // remove Image
	ActionCleanup        Action = "cleanup"        // remove leftovers
	ActionTakeLock       Action = "takeLock"       // take the update locks of App's Services
	ActionReleaseLock    Action = "releaseLock"    // release the agent's locks of App
	ActionNoop           Action = "noop"           // nothing to do now, but not converged: wait and plan again

	// Dependent apps (microcontrollers carried by this device): their
	// images are fetched with ActionFetch and never run.
	ActionUpdateDependentTargets Action = "updateDependentTargets" // store Dependent: the app and its devices' targets; devices that left it are marked for deletion
	ActionSendDependentHooks     Action = "sendDependentHooks"     // the app's firmware is on the device: tell the gateway application of devices whose target changed (Hash: the stored target)
	ActionRemoveDependentApp     Action = "removeDependentApp"     // forget the app, its devices and their firmware, in one transaction
)

// Step is one thing to do. Only the fields its Action needs are set.
type Step struct {
	Action  Action              `json:"action"`
	AppUUID string              `json:"app_uuid,omitempty"`
	Service string              `json:"service,omitempty"`
	Current *reeve.ServiceState `json:"current,omitempty"`
	Target  *reeve.ServiceSpec  `json:"target,omitempty"`
	Image   string              `json:"image,omitempty"`
	Network *reeve.NetworkSpec  `json:"network,omitempty"`
	Volume  *reeve.VolumeSpec   `json:"volume,omitempty"`
	// Replace is set on createVolume when the volume exists with another
	// definition: its data is kept.
	Replace bool `json:"replace,omitempty"`
	// Services lists the services takeLock covers.
	Services []string `json:"services,omitempty"`
	// Deadline is when a handover stops waiting and kills Current anyway.
	Deadline time.Time `json:"deadline,omitzero"`
	// Reason says why a noop waits, for status and logs.
	Reason string `json:"reason,omitempty"`
	// Dependent is the target updateDependentTargets stores.
	Dependent *reeve.DependentApp `json:"dependent,omitempty"`
	// Hash is the stored dependent target sendDependentHooks releases
	// hooks for.
	Hash string `json:"hash,omitempty"`
}

func (s Step) String() string {
	switch {
	case s.Action == ActionNoop:
		return fmt.Sprintf("noop (%s)", s.Reason)
	case s.Action == ActionTakeLock:
		return fmt.Sprintf("%s %s %v", s.Action, short(s.AppUUID), s.Services)
	case s.Action == ActionUpdateDependentTargets || s.Action == ActionSendDependentHooks || s.Action == ActionRemoveDependentApp:
		return fmt.Sprintf("%s %s", s.Action, short(s.AppUUID))
	case s.Action == ActionReleaseLock:
		return fmt.Sprintf("%s %s", s.Action, short(s.AppUUID))
	case s.Image != "":
		return fmt.Sprintf("%s %s/%s %s", s.Action, short(s.AppUUID), s.Service, s.Image)
	case s.Network != nil:
		return fmt.Sprintf("%s network %s/%s", s.Action, short(s.Network.AppUUID), s.Network.Name)
	case s.Volume != nil:
		return fmt.Sprintf("%s volume %s/%s", s.Action, short(s.Volume.AppUUID), s.Volume.Name)
	default:
		return fmt.Sprintf("%s %s/%s", s.Action, short(s.AppUUID), s.Service)
	}
}

func short(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

// HandingOverPrefix starts the Reason of a noop that waits for a hand-over.
const HandingOverPrefix = "handing over to the new"

// LockState says who holds an app's update locks.
type LockState struct {
	HeldByAgent bool // the agent took them for an update in progress
	HeldByUser  bool // a service holds updates.lock: destructive steps wait
}

// Env is what the planner knows besides current and target state.
type Env struct {
	// Now is the planner's clock (handover deadlines).
	Now time.Time
	// InFlight holds the normalized references of images being downloaded.
	InFlight map[string]bool
	// FetchFailed holds the normalized references whose last download
	// failed, with the error; they are retried by the caller's backoff.
	FetchFailed map[string]string
	// HandoverDone holds "<appUUID>/<service>" for services whose new
	// container has written its handover-complete file.
	HandoverDone map[string]bool
	// Locks holds each app's update lock state, by app UUID.
	Locks map[string]LockState
	// Force overrides user-held update locks.
	Force bool
	// OwnedImages holds normalized references of images the agent fetched;
	// only these are ever removed.
	OwnedImages map[string]bool
	// KeepImages holds every image: the target is an intermediate one (an
	// app restarting or being purged) whose images are needed again soon.
	KeepImages bool
	// DependentTargets are the dependent apps of the target state, with
	// their devices' targets (reeve.TargetState.DependentApps), by app UUID.
	DependentTargets map[string]reeve.DependentApp
	// Dependents is what the agent has stored of each dependent app, by
	// app UUID.
	Dependents map[string]DependentState
}

// DependentState is what the agent has stored of one dependent app.
type DependentState struct {
	// TargetHash is the reeve.DependentApp.Hash of the target stored last.
	TargetHash string
	// HooksHash is the TargetHash the gateway application was last told
	// about (sendDependentHooks).
	HooksHash string
}
