package docker

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/volume"
	"github.com/moby/moby/client"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/runtime"
)

// A volume's data survives a change of definition through a backup volume
// reeve.backup_<volume> (labels io.reeve.backup-of, the volume it copies;
// io.reeve.backup-hash, the config hash of that volume; io.reeve.backup-id,
// a random token naming this backup). The name cannot be a release
// volume's: those are <namespace_>?<appUUID>_<name>, and neither an app
// UUID nor a namespace is "reeve.backup". ReplaceVolume:
//
//	(1) create the backup, copy the volume into it
//	(2) remove the volume
//	(3) create the volume with the new definition and the label
//	    io.reeve.restored-from=<backup-id>
//	(4) copy the backup into it
//	(5) remove the backup
//
// Whatever step a crash interrupts, the state on the engine says what to do:
//
//   - backup and a volume restored from it (restored-from is the backup's
//     id), whatever its hash: stopped in (3) or (4); the backup is
//     complete, the volume partial.
//   - backup and a volume with another hash: likewise (a volume made by an
//     agent from before io.reeve.restored-from).
//   - backup and volume with the backup's hash, not restored from it:
//     stopped in (1) or (2); the volume is intact, the backup may be
//     partial and is dropped.
//   - backup, no volume: stopped after (2); the backup is complete.
//
// Snapshot does not list a partial volume, so the planner creates it, and
// CreateVolume (re)does (3)–(5). (3)–(5) are also how CreateVolume restores
// a backup when the target went back to the backup's own definition: that
// is why a partial volume is told by its restored-from label, not its hash.

// legacyID is the backup id of a backup an agent made before backups had
// ids (named <volume>_reeve-backup).
const legacyID = "legacy"

// CreateVolume creates the release volume <appUUID>_<name>. If a backup
// left by an interrupted ReplaceVolume exists, its data is restored into
// the new volume. A volume of that name with the same definition is kept;
// one with another definition is an error (use ReplaceVolume).
func (r *Runtime) CreateVolume(ctx context.Context, spec reeve.VolumeSpec) error {
	name := engineName(r.prefix+spec.AppUUID, spec.Name)
	defer r.locks.lock("volume/" + name)()
	return r.createVolume(ctx, spec, name)
}

func (r *Runtime) createVolume(ctx context.Context, spec reeve.VolumeSpec, name string) error {
	vol, exists, err := r.inspectVolume(ctx, name)
	if err != nil {
		return err
	}
	backup, hasBackup, err := r.backupOf(ctx, name)
	if err != nil {
		return err
	}
	if hasBackup {
		if !exists || partialRestore(vol, backup) {
			return r.restore(ctx, spec, name, backup, vol, exists)
		}
		// The original is intact; the copy may be partial.
		if err := r.removeVolume(ctx, backup.Name); err != nil {
			return fmt.Errorf("create volume %s: drop stale backup: %w", name, err)
		}
	}
	if exists {
		if vol.Labels[LabelManaged] == r.managed && vol.Labels[LabelConfigHash] == spec.Volume.ConfigHash() {
			return nil
		}
		return fmt.Errorf("create volume %s: a volume of that name exists with another definition", name)
	}
	return r.newVolume(ctx, spec, name, "")
}

// partialRestore reports whether vol is a copy of backup that restore has
// not finished.
func partialRestore(vol, backup volume.Volume) bool {
	return vol.Labels[LabelRestoredFrom] == backupID(backup) ||
		vol.Labels[LabelConfigHash] != backup.Labels[LabelBackupHash]
}

// ReplaceVolume gives an existing volume a new definition, keeping its data
// (see the steps above). The volume must not be in use by any container,
// running or not.
func (r *Runtime) ReplaceVolume(ctx context.Context, spec reeve.VolumeSpec) error {
	name := engineName(r.prefix+spec.AppUUID, spec.Name)
	defer r.locks.lock("volume/" + name)()

	vol, exists, err := r.inspectVolume(ctx, name)
	if err != nil {
		return err
	}
	if !exists {
		return r.createVolume(ctx, spec, name)
	}
	backup, hasBackup, err := r.backupOf(ctx, name)
	if err != nil {
		return err
	}
	oldHash := vol.Labels[LabelConfigHash]
	if hasBackup {
		if partialRestore(vol, backup) {
			return r.restore(ctx, spec, name, backup, vol, true)
		}
		if err := r.removeVolume(ctx, backup.Name); err != nil {
			return fmt.Errorf("replace volume %s: drop stale backup: %w", name, err)
		}
	}
	if vol.Labels[LabelManaged] != r.managed {
		return fmt.Errorf("replace volume %s: the volume of that name is not reeve's", name)
	}
	if oldHash == spec.Volume.ConfigHash() {
		return nil
	}

	// (1) back up.
	bname := backupName(name)
	backup, err = r.createBackup(ctx, spec, name, bname, oldHash)
	if err != nil {
		return err
	}
	if err := r.copyVolume(ctx, name, bname); err != nil {
		return fmt.Errorf("replace volume %s: back up: %w", name, err)
	}
	// (2) remove the original, once the backup is sure to be there still.
	if err := r.checkBackup(ctx, name, backup); err != nil {
		return err
	}
	if err := r.removeVolume(ctx, name); err != nil {
		return fmt.Errorf("replace volume %s: remove old volume: %w", name, err)
	}
	// (3)–(5)
	if err := r.restore(ctx, spec, name, backup, volume.Volume{}, false); err != nil {
		return fmt.Errorf("replace volume %s: %w", name, err)
	}
	return nil
}

// createBackup makes the empty backup volume of step (1). The engine
// answers a create of a name that exists with the volume that exists, and
// it finishes requests of an attempt that was cut short (a killed agent, a
// deadline) after the caller gave up: a late create of a helper container
// even makes the volume it mounts, without labels, and a late remove can
// take away the backup just made. None of those is the only copy of
// anything (the original is still whole until its backup is complete), so
// such a volume is dropped and the backup made again, a few times, with a
// pause for stragglers to land. A volume of that name that is a backup of
// something else is not touched. The reeve.backup_ prefix is reeve's.
func (r *Runtime) createBackup(ctx context.Context, spec reeve.VolumeSpec, name, bname, oldHash string) (volume.Volume, error) {
	const attempts = 5
	for attempt := 1; ; attempt++ {
		id := randomToken()
		labels := map[string]string{
			LabelBackupOf:   name,
			LabelBackupHash: oldHash,
			LabelBackupID:   id,
			LabelAppUUID:    spec.AppUUID,
		}
		if _, err := r.c.VolumeCreate(ctx, client.VolumeCreateOptions{Name: bname, Labels: labels}); err != nil {
			return volume.Volume{}, r.wrap(err, "replace volume %s: create backup volume %s", name, bname)
		}
		backup, ok, err := r.inspectVolume(ctx, bname)
		if err != nil {
			return volume.Volume{}, fmt.Errorf("replace volume %s: %w", name, err)
		}
		leftover := ok && (isBackupOf(backup, name) || len(backup.Labels) == 0)
		switch {
		case ok && isBackupOf(backup, name) && backup.Labels[LabelBackupID] == id && backup.Labels[LabelBackupHash] == oldHash:
			return backup, nil // ours: write only into the backup just made
		case ok && !leftover:
			return volume.Volume{}, fmt.Errorf("replace volume %s: a volume named %s exists that is not its backup: not touching it", name, bname)
		case attempt == attempts:
			return volume.Volume{}, fmt.Errorf("replace volume %s: the backup volume %s keeps being changed by someone else: try again later", name, bname)
		case leftover:
			r.log.Info("dropping the backup volume of an earlier attempt", "volume", bname)
			if err := r.removeVolume(ctx, bname); err != nil {
				return volume.Volume{}, fmt.Errorf("replace volume %s: drop an earlier attempt's backup: %w", name, err)
			}
		}
		// !ok: a late remove took the backup just made.
		select {
		case <-ctx.Done():
			return volume.Volume{}, r.wrap(ctx.Err(), "replace volume %s: create backup volume %s", name, bname)
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
}

// checkBackup makes sure backup is still there, the same one: a copy from
// a backup that vanished would make an empty volume in its place.
func (r *Runtime) checkBackup(ctx context.Context, name string, backup volume.Volume) error {
	now, ok, err := r.inspectVolume(ctx, backup.Name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	if !ok || !isBackupOf(now, name) || backupID(now) != backupID(backup) {
		return fmt.Errorf("volume %s: its backup %s was removed or replaced meanwhile: the volume is left as it is", name, backup.Name)
	}
	return nil
}

// restore does (3)–(5): (re)create the volume from spec and copy the
// complete backup into it, then drop the backup. exists says a partial
// volume vol of that name is there.
func (r *Runtime) restore(ctx context.Context, spec reeve.VolumeSpec, name string, backup, vol volume.Volume, exists bool) error {
	if err := r.checkBackup(ctx, name, backup); err != nil {
		return err
	}
	if exists {
		if vol.Labels[LabelManaged] != r.managed {
			return fmt.Errorf("restore volume %s: a volume of that name exists that is not reeve's", name)
		}
		if err := r.removeVolume(ctx, name); err != nil {
			return fmt.Errorf("restore volume %s: remove partial copy: %w", name, err)
		}
	}
	if err := r.newVolume(ctx, spec, name, backupID(backup)); err != nil {
		return err
	}
	if err := r.copyVolume(ctx, backup.Name, name); err != nil {
		return fmt.Errorf("restore volume %s from %s: %w", name, backup.Name, err)
	}
	if err := r.removeVolume(ctx, backup.Name); err != nil {
		return fmt.Errorf("restore volume %s: %w", name, err)
	}
	r.log.Info("restored volume data", "volume", name)
	return nil
}

// newVolume creates the volume with reeve's labels; restoredFrom is the id
// of the backup that restore copies into it, "" for none.
func (r *Runtime) newVolume(ctx context.Context, spec reeve.VolumeSpec, name, restoredFrom string) error {
	labels := map[string]string{}
	maps.Copy(labels, spec.Volume.Labels)
	maps.Copy(labels, map[string]string{
		LabelManaged:    r.managed,
		LabelAppUUID:    spec.AppUUID,
		LabelVolumeName: spec.Name,
		LabelConfigHash: spec.Volume.ConfigHash(),
	})
	if restoredFrom != "" {
		labels[LabelRestoredFrom] = restoredFrom
	}
	_, err := r.c.VolumeCreate(ctx, client.VolumeCreateOptions{
		Name:       name,
		Driver:     spec.Volume.Driver,
		DriverOpts: spec.Volume.DriverOpts,
		Labels:     labels,
	})
	return r.wrap(err, "create volume %s", name)
}

// RemoveVolume removes the release volume and any backup of it; removing a
// missing volume is a no-op, one that a container uses is an error.
func (r *Runtime) RemoveVolume(ctx context.Context, appUUID, name string) error {
	full := engineName(r.prefix+appUUID, name)
	defer r.locks.lock("volume/" + full)()
	if err := r.removeVolume(ctx, full); err != nil {
		return err
	}
	b, ok, err := r.backupOf(ctx, full)
	if err != nil || !ok {
		return err
	}
	return r.removeVolume(ctx, b.Name)
}

// removeVolume removes a volume, and first the helper containers an
// interrupted copy left on it (the caller holds the volume's lock, so no
// copy of this process uses them).
func (r *Runtime) removeVolume(ctx context.Context, name string) error {
	for attempt := 1; ; attempt++ {
		list, err := r.c.ContainerList(ctx, client.ContainerListOptions{
			All:     true,
			Filters: client.Filters{}.Add("label", LabelHelper+"=true").Add("volume", name),
		})
		if err != nil {
			return r.wrap(err, "list helper containers of volume %s", name)
		}
		for _, c := range list.Items {
			r.removeHelper(ctx, c.ID)
		}
		_, err = r.c.VolumeRemove(ctx, name, client.VolumeRemoveOptions{})
		switch {
		case isNotFound(err):
			return nil
		case isConflict(err) && attempt < 4:
			// In use: a helper created by an attempt cut short can land
			// after the listing (the engine finishes what its client
			// gave up on). Look again; a service's container that uses
			// the volume keeps the error.
			select {
			case <-ctx.Done():
				return r.wrap(err, "remove volume %s", name)
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
			continue
		}
		return r.wrap(err, "remove volume %s", name)
	}
}

func (r *Runtime) inspectVolume(ctx context.Context, name string) (volume.Volume, bool, error) {
	res, err := r.c.VolumeInspect(ctx, name, client.VolumeInspectOptions{})
	if isNotFound(err) {
		return volume.Volume{}, false, nil
	}
	if err != nil {
		return volume.Volume{}, false, r.wrap(err, "inspect volume %s", name)
	}
	return res.Volume, true, nil
}

// backupName is the engine name of the backup of volume (an engine name).
func backupName(volume string) string { return "reeve.backup_" + volume }

// legacyBackupName is the name agents used before backupName; it can be a
// release volume's name, so a volume of that name is a backup only when it
// is not managed.
func legacyBackupName(volume string) string { return volume + "_reeve-backup" }

// isBackupOf reports whether v is a backup of volume name made by reeve.
func isBackupOf(v volume.Volume, name string) bool {
	return v.Labels[LabelBackupOf] == name && v.Labels[LabelManaged] == "" &&
		(v.Name == backupName(name) || v.Name == legacyBackupName(name))
}

// backupID is the id of a backup.
func backupID(v volume.Volume) string {
	if id := v.Labels[LabelBackupID]; id != "" {
		return id
	}
	return legacyID
}

// backupOf returns the backup of volume name, if there is one.
func (r *Runtime) backupOf(ctx context.Context, name string) (volume.Volume, bool, error) {
	for _, bn := range []string{backupName(name), legacyBackupName(name)} {
		v, ok, err := r.inspectVolume(ctx, bn)
		if err != nil {
			return volume.Volume{}, false, err
		}
		if ok && isBackupOf(v, name) {
			return v, true, nil
		}
	}
	return volume.Volume{}, false, nil
}

// volumes lists the volumes reeve owns, leaving out a volume that is being
// restored from a backup (it is not there yet, as far as the planner goes).
func (r *Runtime) volumes(ctx context.Context) ([]reeve.VolumeState, error) {
	list, err := r.c.VolumeList(ctx, client.VolumeListOptions{Filters: client.Filters{}.Add("label", LabelManaged+"="+r.managed)})
	if err != nil {
		return nil, r.wrap(err, "list volumes")
	}
	backups, err := r.c.VolumeList(ctx, client.VolumeListOptions{Filters: client.Filters{}.Add("label", LabelBackupOf)})
	if err != nil {
		return nil, r.wrap(err, "list backup volumes")
	}
	backupOf := map[string][]volume.Volume{}
	for _, b := range backups.Items {
		if isBackupOf(b, b.Labels[LabelBackupOf]) {
			backupOf[b.Labels[LabelBackupOf]] = append(backupOf[b.Labels[LabelBackupOf]], b)
		}
	}
	out := []reeve.VolumeState{}
	for _, v := range list.Items {
		if slices.ContainsFunc(backupOf[v.Name], func(b volume.Volume) bool { return partialRestore(v, b) }) {
			continue
		}
		out = append(out, reeve.VolumeState{
			AppUUID:    v.Labels[LabelAppUUID],
			Name:       v.Labels[LabelVolumeName],
			ConfigHash: v.Labels[LabelConfigHash],
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].AppUUID != out[j].AppUUID {
			return out[i].AppUUID < out[j].AppUUID
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// copyVolume copies the content of volume from into volume to, without
// running anything: two helper containers (created, never started) mount
// the volumes at /v, and the archive API streams one into the other.
// Owners, modes and times are kept, also the volume root's. The copy is
// checked (entries and bytes read back from to) before it returns.
func (r *Runtime) copyVolume(ctx context.Context, from, to string) error {
	// Cleanup removes helpers; not while a copy uses them.
	mu := helperLock(r.managed)
	mu.RLock()
	defer mu.RUnlock()
	src, dst, err := r.createHelpers(ctx, from, to)
	if err != nil {
		return err
	}
	defer r.removeHelper(ctx, src)
	defer r.removeHelper(ctx, dst)

	res, err := r.c.CopyFromContainer(ctx, src, client.CopyFromContainerOptions{SourcePath: "/v/."})
	if err != nil {
		return r.wrap(err, "read volume %s", from)
	}
	defer res.Content.Close()

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	var sent tarStats
	go func() {
		var err error
		sent, err = rebaseTar(res.Content, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	// Entries are named v/…, extracted at /: the engine applies the
	// owner and mode of the v/ entry to the mount point, the volume root
	// (it skips them for the "." entry of an archive extracted into /v).
	_, err = r.c.CopyToContainer(ctx, dst, client.CopyToContainerOptions{DestinationPath: "/", Content: pr})
	pr.CloseWithError(errors.New("copy aborted"))
	rerr := <-done
	if err != nil {
		return r.wrap(err, "write volume %s", to)
	}
	if rerr != nil {
		return fmt.Errorf("read volume %s: %w", from, rerr)
	}

	// Check: read the copy back.
	back, err := r.c.CopyFromContainer(ctx, dst, client.CopyFromContainerOptions{SourcePath: "/v/."})
	if err != nil {
		return r.wrap(err, "check volume %s", to)
	}
	defer back.Content.Close()
	got, err := rebaseTar(back.Content, io.Discard)
	if err != nil {
		return fmt.Errorf("check volume %s: %w", to, err)
	}
	if got != sent {
		return fmt.Errorf("copy volume %s to %s: the copy has %d entries and %d bytes, the original %d and %d",
			from, to, got.entries, got.bytes, sent.entries, sent.bytes)
	}
	return nil
}

// tarStats counts the entries of an archive and the bytes of its files.
type tarStats struct{ entries, bytes int64 }

// rebaseTar copies a tar stream, naming every entry under "v/" ("v/" for
// the copied directory itself, "v/a/b" below it), whether the engine named
// them "./…" or "v/…", and counts what it copied.
func rebaseTar(in io.Reader, out io.Writer) (tarStats, error) {
	var st tarStats
	tr := tar.NewReader(in)
	tw := tar.NewWriter(out)
	root := ""
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read archive: %w", err)
		}
		if root == "" {
			// The first entry is the directory itself.
			root = strings.TrimSuffix(hdr.Name, "/") + "/"
		}
		hdr.Name = rebase(hdr.Name, root)
		if hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = rebase(hdr.Linkname, root)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return st, fmt.Errorf("write archive: %w", err)
		}
		n, err := io.Copy(tw, tr)
		if err != nil {
			return st, fmt.Errorf("copy %s: %w", hdr.Name, err)
		}
		st.entries++
		st.bytes += n
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("write archive: %w", err)
	}
	return st, nil
}

func rebase(name, root string) string {
	if strings.TrimSuffix(name, "/")+"/" == root {
		return "v/"
	}
	return "v/" + strings.TrimPrefix(name, root)
}

// createHelpers creates the two helper containers of a copy, from the
// helper image, which something else (an image prune) may remove between
// its check and the create: then it is loaded again.
func (r *Runtime) createHelpers(ctx context.Context, from, to string) (src, dst string, err error) {
	for attempt := 0; ; attempt++ {
		image, err := r.helperImage(ctx)
		if err != nil {
			return "", "", err
		}
		src, err = r.createHelper(ctx, image, from)
		if err == nil {
			dst, err = r.createHelper(ctx, image, to)
			if err == nil {
				return src, dst, nil
			}
			r.removeHelper(ctx, src)
		}
		if attempt < 3 && errors.Is(err, runtime.ErrNotFound) && r.imageGone(ctx, image) {
			continue
		}
		return "", "", err
	}
}

// imageGone reports whether the engine no longer has the image.
func (r *Runtime) imageGone(ctx context.Context, id string) bool {
	_, err := r.c.ImageInspect(ctx, id)
	return cerrdefs.IsNotFound(err)
}

// createHelper creates a helper container that mounts volume at /v.
func (r *Runtime) createHelper(ctx context.Context, image, vol string) (string, error) {
	res, err := r.c.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{
			Image:           image,
			Entrypoint:      []string{"/reeve-helper-is-never-started"},
			Labels:          map[string]string{LabelHelper: "true", LabelHelperOwner: r.managed},
			NetworkDisabled: true,
		},
		HostConfig: &container.HostConfig{
			NetworkMode: "none",
			Mounts: []mount.Mount{{
				Type:          mount.TypeVolume,
				Source:        vol,
				Target:        "/v",
				VolumeOptions: &mount.VolumeOptions{NoCopy: true},
			}},
		},
	})
	if err != nil {
		return "", r.wrap(err, "create helper container for volume %s", vol)
	}
	return res.ID, nil
}

func (r *Runtime) removeHelper(ctx context.Context, id string) {
	_, err := r.c.ContainerRemove(context.WithoutCancel(ctx), id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !isNotFound(err) {
		r.log.Warn("helper container left behind; cleanup removes it", "container", shortID(id), "err", err)
	}
}

// Cleanup removes helper containers a crash left behind. Those of its
// namespace (the agent's own, and those of the agent that ran before it)
// are removed at once: it waits for the copies this process is making.
// Another namespace's are removed only once they are older than
// helperMaxAge, so that Cleanup never breaks a copy another agent on the
// same engine is making. (An operation on a volume removes the leftover
// helpers that mount it at once.) Images are not touched: the agent removes
// the images it no longer needs by reference (RemoveImage), and an untagged
// image (pulled by digest, or the user's) is not reeve's to remove.
func (r *Runtime) Cleanup(ctx context.Context) error {
	mu := helperLock(r.managed)
	mu.Lock()
	defer mu.Unlock()
	list, err := r.c.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: client.Filters{}.Add("label", LabelHelper+"=true"),
	})
	if err != nil {
		return r.wrap(err, "cleanup: list helper containers")
	}
	for _, c := range list.Items {
		age := time.Since(time.Unix(c.Created, 0))
		if c.Labels[LabelHelperOwner] != r.managed && age < r.helperMaxAge {
			continue
		}
		_, err := r.c.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !isNotFound(err) {
			return r.wrap(err, "cleanup: remove helper container %s", shortID(c.ID))
		}
		r.log.Info("removed leftover helper container", "container", shortID(c.ID), "age", age.Round(time.Second))
	}
	return nil
}

// helperLocks holds, per namespace, the lock that keeps Cleanup from
// removing the helpers of a copy in progress in this process (copies read,
// Cleanup writes). It is per process, not per Runtime, since helpers are
// marked with the namespace.
var helperLocks sync.Map // namespace → *sync.RWMutex

func helperLock(namespace string) *sync.RWMutex {
	mu, _ := helperLocks.LoadOrStore(namespace, &sync.RWMutex{})
	return mu.(*sync.RWMutex)
}
