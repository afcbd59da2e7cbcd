// Package deploy holds the examples of running vmscope fleet under a
// scheduler (Kubernetes, systemd, GNU parallel, Slurm); its tests check
// them: the Kubernetes manifests decode strictly into the API types and
// keep the rules the API server enforces, the systemd units pass
// systemd-analyze verify.
package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/vmscope/vmscope/internal/fixture"
)

// decode decodes a manifest strictly (a misspelt or unknown field fails)
// into the type of its kind.
func decode(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tm struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(b, &tm); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "batch/v1 Job":
		obj = &batchv1.Job{}
	case "batch/v1 CronJob":
		obj = &batchv1.CronJob{}
	case "v1 PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	default:
		t.Fatalf("%s: unexpected %s %s", path, tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(b, obj); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return obj
}

func TestStrictDecodeRejectsMisspelt(t *testing.T) {
	b, err := os.ReadFile("k8s/indexed-job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "\n  backoffLimitPerIndex:", "\n  backoffLimitPerIdx:", 1)
	if bad == string(b) {
		t.Fatal("no backoffLimitPerIndex key to misspell")
	}
	if err := yaml.UnmarshalStrict([]byte(bad), &batchv1.Job{}); err == nil {
		t.Fatal("a misspelt field decoded")
	}
}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// checkJob checks what the API server (and vmscope) require of a Job
// spec, written by hand from the Kubernetes documentation (batch/v1 Job
// validation): it returns the problems.
func checkJob(name string, spec *batchv1.JobSpec, claims map[string]bool) []string {
	var errs []string
	fail := func(f string, a ...any) { errs = append(errs, name+": "+fmt.Sprintf(f, a...)) }
	pod := &spec.Template.Spec
	indexed := spec.CompletionMode != nil && *spec.CompletionMode == batchv1.IndexedCompletion
	if spec.BackoffLimitPerIndex != nil && !indexed {
		fail("backoffLimitPerIndex needs completionMode Indexed")
	}
	if spec.MaxFailedIndexes != nil && spec.BackoffLimitPerIndex == nil {
		fail("maxFailedIndexes needs backoffLimitPerIndex")
	}
	if (spec.BackoffLimitPerIndex != nil || spec.PodFailurePolicy != nil) && pod.RestartPolicy != corev1.RestartPolicyNever {
		fail("backoffLimitPerIndex and podFailurePolicy need restartPolicy Never, not %q", pod.RestartPolicy)
	}
	if pod.RestartPolicy != corev1.RestartPolicyNever && pod.RestartPolicy != corev1.RestartPolicyOnFailure {
		fail("a Job's restartPolicy is Never or OnFailure, not %q", pod.RestartPolicy)
	}
	if indexed && spec.Completions == nil {
		fail("an Indexed Job needs completions")
	}
	if spec.Parallelism != nil && spec.Completions != nil && *spec.Parallelism > *spec.Completions {
		fail("parallelism %d > completions %d", *spec.Parallelism, *spec.Completions)
	}
	if p := spec.PodFailurePolicy; p != nil {
		if len(p.Rules) > 20 {
			fail("more than 20 podFailurePolicy rules")
		}
		for i, r := range p.Rules {
			switch r.Action {
			case batchv1.PodFailurePolicyActionFailJob, batchv1.PodFailurePolicyActionIgnore, batchv1.PodFailurePolicyActionCount:
			case batchv1.PodFailurePolicyActionFailIndex:
				if spec.BackoffLimitPerIndex == nil {
					fail("rule %d: FailIndex needs backoffLimitPerIndex", i)
				}
			default:
				fail("rule %d: action %q", i, r.Action)
			}
			if (r.OnExitCodes == nil) == (len(r.OnPodConditions) == 0) {
				fail("rule %d: exactly one of onExitCodes and onPodConditions", i)
			}
			if e := r.OnExitCodes; e != nil {
				if e.Operator != batchv1.PodFailurePolicyOnExitCodesOpIn && e.Operator != batchv1.PodFailurePolicyOnExitCodesOpNotIn {
					fail("rule %d: operator %q", i, e.Operator)
				}
				if len(e.Values) == 0 || len(e.Values) > 255 || !slices.IsSorted(e.Values) {
					fail("rule %d: values must be 1 to 255 sorted codes", i)
				}
				if e.Operator == batchv1.PodFailurePolicyOnExitCodesOpIn && slices.Contains(e.Values, 0) {
					fail("rule %d: operator In with 0", i)
				}
				if e.ContainerName != nil && !slices.ContainsFunc(pod.Containers, func(c corev1.Container) bool { return c.Name == *e.ContainerName }) {
					fail("rule %d: no container %q", i, *e.ContainerName)
				}
			}
			for _, c := range r.OnPodConditions {
				if c.Status == "" {
					// The server defaults it to True.
					continue
				}
			}
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
		if v.PersistentVolumeClaim != nil && claims != nil && !claims[v.PersistentVolumeClaim.ClaimName] {
			fail("volume %s: claim %q is not in deploy/k8s", v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
	for _, c := range pod.Containers {
		if !dns1123.MatchString(c.Name) || c.Image == "" {
			fail("container %q: a DNS-1123 name and an image", c.Name)
		}
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				fail("container %s mounts unknown volume %s", c.Name, m.Name)
				continue
			}
			if v.HostPath != nil && !m.ReadOnly {
				fail("container %s: images volume %s must be mounted read-only", c.Name, m.Name)
			}
		}
		args := append(slices.Clone(c.Command), c.Args...)
		if i := slices.Index(args, "scan"); i > 0 && args[i-1] == "fleet" {
			for j, a := range args {
				if a != "--shard" || j+1 >= len(args) {
					continue
				}
				n, err := strconv.Atoi(strings.TrimPrefix(args[j+1], "auto/"))
				if !strings.HasPrefix(args[j+1], "auto/") || err != nil {
					fail("--shard %s: a Job's pods take auto/N", args[j+1])
				} else if spec.Completions == nil || int(*spec.Completions) != n {
					fail("completions %v differ from the N of --shard auto/%d", spec.Completions, n)
				}
			}
			if !slices.Contains(args, "--shard") {
				fail("fleet scan without --shard")
			}
			if k := slices.Index(args, "--findings-exit-code"); k < 0 || args[k+1] != "0" {
				fail("fleet scan in a Job needs --findings-exit-code 0 (a non-zero exit fails the pod and a retry redoes work)")
			}
			jobName := slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "JOB_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.labels['job-name']"
			})
			if !jobName && !slices.Contains(args, "--run-id") {
				fail("fleet scan needs JOB_NAME from the job-name label (downward API) or --run-id: a retried pod must resume its run")
			}
			for _, m := range c.VolumeMounts {
				if v := vols[m.Name]; v.PersistentVolumeClaim != nil && m.ReadOnly {
					fail("the state volume %s is read-only", m.Name)
				}
			}
		}
	}
	return errs
}

func TestManifests(t *testing.T) {
	files, _ := filepath.Glob("k8s/*.yaml")
	if len(files) < 4 {
		t.Fatalf("deploy/k8s: %v", files)
	}
	claims := map[string]bool{}
	var objs []any
	for _, f := range files {
		o := decode(t, f)
		objs = append(objs, o)
		if pvc, ok := o.(*corev1.PersistentVolumeClaim); ok {
			claims[pvc.Name] = true
			if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
				t.Errorf("%s: the shards share it: ReadWriteMany", f)
			}
		}
	}
	kinds := map[string]bool{}
	for i, o := range objs {
		var errs []string
		switch x := o.(type) {
		case *batchv1.Job:
			kinds["job"] = true
			if x.Spec.CompletionMode != nil && *x.Spec.CompletionMode == batchv1.IndexedCompletion {
				kinds["indexed"] = true
			}
			if !dns1123.MatchString(x.Name) {
				errs = append(errs, "name "+x.Name)
			}
			errs = append(errs, checkJob(files[i], &x.Spec, claims)...)
		case *batchv1.CronJob:
			kinds["cronjob"] = true
			if x.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
				errs = append(errs, "a fleet CronJob must not overlap its polls: concurrencyPolicy Forbid")
			}
			if len(strings.Fields(x.Spec.Schedule)) != 5 {
				errs = append(errs, "schedule "+x.Spec.Schedule)
			}
			if len(x.Name) > 52 {
				errs = append(errs, "a CronJob name is at most 52 characters")
			}
			errs = append(errs, checkJob(files[i], &x.Spec.JobTemplate.Spec, claims)...)
		}
		for _, e := range errs {
			t.Error(e)
		}
	}
	for _, k := range []string{"job", "indexed", "cronjob"} {
		if !kinds[k] {
			t.Errorf("deploy/k8s has no %s", k)
		}
	}
}

// TestCheckJobCatches: the hand-written rules reject what the server
// rejects.
func TestCheckJobCatches(t *testing.T) {
	base := decode(t, "k8s/indexed-job.yaml").(*batchv1.Job)
	claims := map[string]bool{"vmscope-fleet": true}
	if errs := checkJob("ok", &base.Spec, claims); len(errs) > 0 {
		t.Fatal(errs)
	}
	breaks := map[string]func(j *batchv1.JobSpec){
		"restartPolicy OnFailure": func(j *batchv1.JobSpec) { j.Template.Spec.RestartPolicy = corev1.RestartPolicyOnFailure },
		"completions 6":           func(j *batchv1.JobSpec) { n := int32(6); j.Completions = &n },
		"NonIndexed":              func(j *batchv1.JobSpec) { m := batchv1.NonIndexedCompletion; j.CompletionMode = &m },
		"action Retry":            func(j *batchv1.JobSpec) { j.PodFailurePolicy.Rules[0].Action = "Retry" },
		"In 0":                    func(j *batchv1.JobSpec) { j.PodFailurePolicy.Rules[1].OnExitCodes.Values = []int32{0, 64} },
		"writable images": func(j *batchv1.JobSpec) {
			j.Template.Spec.Containers[0].VolumeMounts[0].ReadOnly = false
		},
		"findings exit 1": func(j *batchv1.JobSpec) {
			a := j.Template.Spec.Containers[0].Args
			a[slices.Index(a, "--findings-exit-code")+1] = "1"
		},
		"no JOB_NAME": func(j *batchv1.JobSpec) { j.Template.Spec.Containers[0].Env = nil },
	}
	for name, br := range breaks {
		j := decode(t, "k8s/indexed-job.yaml").(*batchv1.Job)
		br(&j.Spec)
		if errs := checkJob(name, &j.Spec, claims); len(errs) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		fixture.Missing(t, "systemd-analyze (Debian package systemd)")
	}
	units, _ := filepath.Glob("systemd/*")
	out, err := exec.Command(tool, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", units, err, out)
	}
}
