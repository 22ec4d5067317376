/* Apply+destroy of plans/build-action.yaml (13 mounts, 5 symlinks) beneath ROOT in a plain C loop.
 *
 *   build_action exact|minimal ROOT ROUNDS     one line per round: "APPLY_NS DESTROY_NS", then
 *                                              "cpu USER_US SYS_US" of the whole loop
 *   build_action trace ROOT                    one exact round; prints the calls the engine's
 *                                              backend would make, one name a line
 *
 * "exact" makes the kernel calls mountplan's engine makes against the root and the
 * mounts, in its order (compare `strace` of Engine.apply/destroy): the probe of the
 * planned symlinks' parent, the existence probe, mkdir/creat of the mountpoint, its
 * fstatat and its statx evidence (inode, birth time), openat2 beneath the root with
 * RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS, fstat (no symlink), statx for the unique
 * mount id of the target's mount and of the detached mount, one statmount of the mount
 * the root lies on (shared?), move_mount onto the fd, openat2+statx after attaching
 * (landed beneath the root?), mount_setattr for propagation, the engine's reads of the
 * live table (statx, statmount, listmount) beneath the root and beneath the recursive
 * bind's source, and for each /dev symlink symlinkat, openat2 without following, fstat,
 * readlinkat and its statx evidence; destroy: statx (ours?), umount2 through
 * /proc/self/fd, statx (gone?), then fstatat, statx (no mount there), statx evidence
 * and unlinkat of what apply created (not of the mountpoints on the /dev tmpfs, which
 * go with it). It checks the ids it reads, as the engine does.
 * Left out: the engine's own files (journal, state, lock): that bookkeeping is what the
 * ratio prices.
 *
 * "minimal" is what a hand-written tool would do with no checks at all: mkdir,
 * fsopen/fsconfig/fsmount or open_tree, move_mount by a path relative to the root fd,
 * symlinkat, umount2, rmdir. Build: cc -O2 -o build_action build_action.c (Linux >= 6.8
 * headers not needed: numbers and structs are spelled out below).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_fsconfig 431
#define NR_fsmount 432
#define NR_openat2 437
#define NR_mount_setattr 442
#define NR_statmount 457
#define NR_listmount 458

#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#define MOUNT_ATTR_RDONLY 0x1
#define MOUNT_ATTR_NOSUID 0x2
#define MOUNT_ATTR_NODEV 0x4
#define MOUNT_ATTR_NOEXEC 0x8
#define MS_PRIVATE (1 << 18)
#define OPEN_TREE_CLONE 1
#define MOVE_MOUNT_F_EMPTY_PATH 0x4
#define MOVE_MOUNT_T_EMPTY_PATH 0x40
#define RESOLVE_NO_MAGICLINKS 0x2
#define RESOLVE_NO_SYMLINKS 0x4
#define RESOLVE_BENEATH 0x8
#define STATX_MNT_ID_UNIQUE_ 0x4000
#define UMOUNT_NOFOLLOW_ 8
#define STATMOUNT_MNT_BASIC 0x2

extern int umount2(const char *target, int flags); /* <sys/mount.h> would clash with the names below */

struct open_how_ { uint64_t flags, mode, resolve; };
struct mount_attr_ { uint64_t attr_set, attr_clr, propagation, userns_fd; };
struct mnt_id_req_ { uint32_t size, spare; uint64_t mnt_id, param, mnt_ns_id; };

static int tracing;
static void note(const char *call) { if (tracing) puts(call); }

static void die(const char *what, const char *path) {
    fprintf(stderr, "build_action: %s %s: %s\n", what, path ? path : "", strerror(errno));
    exit(1);
}

static const struct open_how_ HOW_ANY = {O_PATH | O_NOFOLLOW | O_CLOEXEC, 0,
                                         RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
static const struct open_how_ HOW_DIR = {O_PATH | O_DIRECTORY | O_CLOEXEC, 0,
                                         RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};

static int openat2_(int dirfd, const char *path, const struct open_how_ *how) {
    return (int)syscall(NR_openat2, dirfd, path, how, sizeof *how);
}

static int beneath(int dirfd, const char *path, const struct open_how_ *how) {
    note("openat2");
    int fd = openat2_(dirfd, path, how);
    if (fd < 0) die("openat2", path);
    return fd;
}

static void probe_absent(int dirfd, const char *path, const struct open_how_ *how) {
    note("openat2_if_exists");
    int fd = openat2_(dirfd, path, how);
    if (fd >= 0 || errno != ENOENT) die("probe (expected ENOENT)", path);
}

static uint64_t mount_id(int dirfd, const char *path, int flags) {
    struct statx stx;
    note("statx_mount_ids");
    if (statx(dirfd, path, flags, STATX_MNT_ID_UNIQUE_, &stx) < 0) die("statx", path);
    return stx.stx_mnt_id;
}

static void not_symlink(int fd, const char *path) {
    struct stat st;
    if (fstat(fd, &st) < 0 || S_ISLNK(st.st_mode)) die("fstat (symlink?)", path);
}

static void setattr(int fd, int flags, uint64_t set, uint64_t propagation) {
    struct mount_attr_ attr = {set, 0, propagation, 0};
    note("mount_setattr");
    if (syscall(NR_mount_setattr, fd, "", flags, &attr, sizeof attr) < 0) die("mount_setattr", NULL);
}

static void fsconfig_string(int fs, const char *key, const char *value) {
    note("fsconfig_set_string");
    if (syscall(NR_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0) < 0) die("fsconfig", key);
}

/* fsopen, fsconfig each option, create, fsmount: the detached mount's fd. */
static int new_fs(const char *type, const char *const *options, unsigned attrs) {
    note("fsopen");
    int fs = (int)syscall(NR_fsopen, type, 1 /* FSOPEN_CLOEXEC */);
    if (fs < 0) die("fsopen", type);
    for (const char *const *o = options; *o; o += 2) fsconfig_string(fs, o[0], o[1]);
    note("fsconfig_create");
    if (syscall(NR_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) die("fsconfig create", type);
    note("fsmount");
    int mnt = (int)syscall(NR_fsmount, fs, 1 /* FSMOUNT_CLOEXEC */, attrs);
    if (mnt < 0) die("fsmount", type);
    close(fs);
    return mnt;
}

static char sm_buf[1 << 16];
#define SCAN_MASK 0x12    /* MNT_BASIC|MNT_POINT */
#define TABLE_MASK 0x3bf  /* SB_BASIC|MNT_BASIC|PROPAGATE_FROM|MNT_ROOT|MNT_POINT|FS_TYPE|MNT_OPTS|FS_SUBTYPE|SB_SOURCE */

static void stat_mount(uint64_t id, uint64_t mask) {
    struct mnt_id_req_ req = {sizeof req, 0, id, mask, 0};
    if (syscall(NR_statmount, &req, sm_buf, sizeof sm_buf, 0) < 0) die("statmount", NULL);
}

static const char *mount_point(void) {
    uint64_t got;
    uint32_t off;
    memcpy(&got, sm_buf + 8, 8);
    memcpy(&off, sm_buf + 108, 4);
    return (got & 0x10) ? sm_buf + 512 + off : "";
}

static uint64_t parent_of(void) { uint64_t p; memcpy(&p, sm_buf + 48, 8); return p; }

static int is_beneath(const char *point, const char *path) {
    size_t n = strlen(path);
    return strncmp(point, path, n) == 0 && (point[n] == 0 || point[n] == '/');
}

/* The engine's read of the live table beneath one path: statx for the mount holding it,
 * up the parents past a stack on the path itself (the holder), listmount of the holder,
 * a short statmount of each listed mount, a full one of each on or below the path. */
static int read_beneath(const char *path) {
    struct statx stx;
    uint64_t ids[512];
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_MNT_ID_UNIQUE_, &stx) < 0) die("statx", path);
    uint64_t holder = stx.stx_mnt_id;
    for (;;) {
        stat_mount(holder, SCAN_MASK);
        uint64_t parent = parent_of();
        if (strcmp(mount_point(), path) != 0 || parent == 0 || parent == holder) break;
        holder = parent;
    }
    struct mnt_id_req_ req = {sizeof req, 0, holder, 0, 0};
    long n = syscall(NR_listmount, &req, ids, 512, 0);
    if (n < 0) die("listmount", path);
    int found = 0;
    for (long i = 0; i < n; i++) {
        stat_mount(ids[i], SCAN_MASK);
        if (!is_beneath(mount_point(), path)) continue;
        stat_mount(ids[i], TABLE_MASK);
        found++;
    }
    return found;
}

/* Mounts made in this apply, and the mount the root lies on once looked up. */
static uint64_t ours[16];
static int nours;
static uint64_t root_mount;

/* Before attaching: the mount the target lies on must not be a shared mount of someone else. */
static void check_parent(uint64_t parent_id) {
    for (int i = 0; i < nours; i++)
        if (ours[i] == parent_id) return;
    if (parent_id == root_mount) return;
    root_mount = parent_id;
    stat_mount(parent_id, TABLE_MASK);
    uint64_t propagation;
    memcpy(&propagation, sm_buf + 72, 8);
    if (propagation & (1 << 20)) { errno = EINVAL; die("target lies on a shared mount", NULL); }
}

/* Attach mnt on target (an O_PATH fd beneath the root), then re-resolve and compare ids. */
static void attach(int rootfd, int mnt, int target, const char *path, int recursive) {
    check_parent(mount_id(target, "", AT_EMPTY_PATH));
    uint64_t id = mount_id(mnt, "", AT_EMPTY_PATH);
    note("move_mount");
    if (syscall(NR_move_mount, mnt, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        die("move_mount", path);
    ours[nours++] = id;
    close(target);
    int check = beneath(rootfd, path, &HOW_ANY);
    if (mount_id(check, "", AT_EMPTY_PATH) != id) { errno = EXDEV; die("landed elsewhere", path); }
    close(check);
    setattr(mnt, AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), 0, MS_PRIVATE);
    close(mnt);
}

/* What apply records of an object it made: device, inode and birth time (statx INO|BTIME). */
static void evidence(int dirfd, const char *name, int flags) {
    struct statx stx;
    note("root_evidence");
    if (statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_BTIME, &stx) < 0) die("statx", name);
}

/* A directory mountpoint right under dirfd: probe, mkdir, fstatat, evidence, open beneath, fstat. */
static int make_dir(int dirfd, const char *name, const struct open_how_ *how) {
    struct stat st;
    probe_absent(dirfd, name, how);
    note("mkdirat");
    if (mkdirat(dirfd, name, 0755) < 0) die("mkdirat", name);
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) die("fstatat", name);
    evidence(dirfd, name, 0);
    int fd = beneath(dirfd, name, how);
    not_symlink(fd, name);
    return fd;
}

static const char *const DEVICES[] = {"null", "zero", "full", "random", "urandom", "tty"};
#define NDEV 6
static const char *const LINKS[][2] = {{"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
                                       {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
                                       {"ptmx", "pts/ptmx"}};
#define NLINK 5
static const char *const OPT_PROC[] = {"source", "proc", NULL};
static const char *const OPT_SYS[] = {"source", "sysfs", NULL};
static const char *const OPT_DEV[] = {"source", "dev", "size", "64k", "mode", "0755", NULL};
static const char *const OPT_TMP[] = {"source", "tmpfs", "size", "256M", "mode", "1777", NULL};
static const char *const OPT_SHM[] = {"source", "shm", "mode", "1777", NULL};
#define NSD (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)

static void fs_mount(int rootfd, const char *type, const char *const *opts, unsigned attrs, const char *name) {
    int mnt = new_fs(type, opts, attrs);
    attach(rootfd, mnt, make_dir(rootfd, name, &HOW_ANY), name, 0);
}

/* A filesystem mounted on a directory made in ROOT/dev (devpts, shm). */
static void dev_mount(int rootfd, int mnt, const char *name, const char *path) {
    int dev = beneath(rootfd, "dev", &HOW_DIR);
    int target = make_dir(dev, name, &HOW_ANY);
    close(dev);
    attach(rootfd, mnt, target, path, 0);
}

static void apply_exact(int rootfd, const char *root) {
    root_mount = 0;
    nours = 0;
    /* the planned symlinks are observed first: their parent, dev, is not there yet (one lookup) */
    note("openat2");
    if (openat2_(rootfd, "dev", &HOW_DIR) >= 0 || errno != ENOENT) die("probe", "dev");
    if (read_beneath(root) != 0) { errno = EEXIST; die("mounts already beneath", root); }
    fs_mount(rootfd, "proc", OPT_PROC, NSD | MOUNT_ATTR_NOEXEC, "proc");
    fs_mount(rootfd, "sysfs", OPT_SYS, NSD | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_RDONLY, "sys");
    fs_mount(rootfd, "tmpfs", OPT_TMP, NSD, "tmp");

    /* tools: a recursive read-only bind of ROOT/toolchain at opt/tools */
    struct stat st;
    int src = beneath(rootfd, "toolchain", &HOW_ANY);
    note("open_tree");
    int mnt = (int)syscall(NR_open_tree, src, "", OPEN_TREE_CLONE | O_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE);
    if (mnt < 0) die("open_tree", "toolchain");
    close(src);
    if (fstat(mnt, &st) < 0) die("fstat", "toolchain");
    setattr(mnt, AT_EMPTY_PATH | AT_RECURSIVE, MOUNT_ATTR_RDONLY | NSD, 0);
    note("openat2"); /* the engine resolves the parent first, then walks from the root */
    if (openat2_(rootfd, "opt", &HOW_DIR) >= 0 || errno != ENOENT) die("probe", "opt");
    int opt = make_dir(rootfd, "opt", &HOW_DIR);
    int target = make_dir(opt, "tools", &HOW_ANY);
    close(opt);
    check_parent(mount_id(target, "", AT_EMPTY_PATH));
    uint64_t id = mount_id(mnt, "", AT_EMPTY_PATH);
    char source[4096];
    snprintf(source, sizeof source, "%s/toolchain", root);
    read_beneath(source); /* the recursive clone's submounts: the mounts beneath the source (none) */
    note("move_mount");
    if (syscall(NR_move_mount, mnt, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        die("move_mount", "opt/tools");
    ours[nours++] = id;
    close(target);
    int check = beneath(rootfd, "opt/tools", &HOW_ANY);
    if (mount_id(check, "", AT_EMPTY_PATH) != id) { errno = EXDEV; die("landed elsewhere", "opt/tools"); }
    close(check);
    setattr(mnt, AT_EMPTY_PATH | AT_RECURSIVE, 0, MS_PRIVATE);
    close(mnt);

    fs_mount(rootfd, "tmpfs", OPT_DEV, NSD | MOUNT_ATTR_NOEXEC, "dev");
    for (int i = 0; i < NDEV; i++) {
        char src_path[32], path[32];
        snprintf(src_path, sizeof src_path, "/dev/%s", DEVICES[i]);
        snprintf(path, sizeof path, "dev/%s", DEVICES[i]);
        note("open_tree");
        int dmnt = (int)syscall(NR_open_tree, AT_FDCWD, src_path, OPEN_TREE_CLONE | O_CLOEXEC);
        if (dmnt < 0) die("open_tree", src_path);
        if (fstat(dmnt, &st) < 0) die("fstat", src_path);
        setattr(dmnt, AT_EMPTY_PATH, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0);
        int dev = beneath(rootfd, "dev", &HOW_DIR);
        probe_absent(dev, DEVICES[i], &HOW_ANY);
        int f = openat(dev, DEVICES[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (f < 0) die("creat", path);
        close(f);
        if (fstatat(dev, DEVICES[i], &st, AT_SYMLINK_NOFOLLOW) < 0) die("fstatat", path);
        evidence(dev, DEVICES[i], 0);
        int dtarget = beneath(dev, DEVICES[i], &HOW_ANY);
        not_symlink(dtarget, path);
        close(dev);
        attach(rootfd, dmnt, dtarget, path, 0);
    }
    static const char *const OPT_PTS[] = {"source", "devpts", NULL};
    note("fsopen");
    int fs = (int)syscall(NR_fsopen, "devpts", 1);
    if (fs < 0) die("fsopen", "devpts");
    fsconfig_string(fs, OPT_PTS[0], OPT_PTS[1]);
    note("fsconfig_set_flag");
    if (syscall(NR_fsconfig, fs, FSCONFIG_SET_FLAG, "newinstance", NULL, 0) < 0) die("fsconfig", "newinstance");
    fsconfig_string(fs, "ptmxmode", "0666");
    fsconfig_string(fs, "mode", "0620");
    note("fsconfig_create");
    if (syscall(NR_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) die("fsconfig create", "devpts");
    note("fsmount");
    int pts = (int)syscall(NR_fsmount, fs, 1, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
    if (pts < 0) die("fsmount", "devpts");
    close(fs);
    dev_mount(rootfd, pts, "pts", "dev/pts");
    dev_mount(rootfd, new_fs("tmpfs", OPT_SHM, NSD), "shm", "dev/shm");

    /* the symlinks: parent resolved, name probed, symlinkat, opened without following, evidence */
    for (int i = 0; i < NLINK; i++) {
        char text[64];
        note("openat2_if_exists");
        int dev = openat2_(rootfd, "dev", &HOW_ANY);
        if (dev < 0) die("openat2", "dev");
        not_symlink(dev, "dev");
        probe_absent(dev, LINKS[i][0], &HOW_ANY);
        note("symlinkat");
        if (symlinkat(LINKS[i][1], dev, LINKS[i][0]) < 0) die("symlinkat", LINKS[i][0]);
        int fd = beneath(dev, LINKS[i][0], &HOW_ANY);
        if (fstat(fd, &st) < 0 || !S_ISLNK(st.st_mode)) die("fstat (symlink)", LINKS[i][0]);
        ssize_t n = readlinkat(fd, "", text, sizeof text);
        if (n < 0 || (size_t)n != strlen(LINKS[i][1]) || memcmp(text, LINKS[i][1], (size_t)n) != 0)
            die("readlinkat", LINKS[i][0]);
        evidence(fd, "", AT_EMPTY_PATH);
        close(fd);
        close(dev);
    }
}

/* Unmount dirfd/name if the mount there is the one found before, and check it is gone. */
static void unmount(int dirfd, const char *name) {
    char path[64];
    uint64_t before = mount_id(dirfd, name, AT_SYMLINK_NOFOLLOW);
    snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
    note("umount_at");
    if (umount2(path, UMOUNT_NOFOLLOW_) < 0) die("umount2", path);
    if (mount_id(dirfd, name, AT_SYMLINK_NOFOLLOW) == before) { errno = EBUSY; die("still mounted", name); }
}

/* Remove what apply made at dirfd/name: not a mount any more (its mount is dirfd's), the same
 * inode and birth time as recorded, then unlinkat. */
static void remove_created(int dirfd, const char *name, int flags) {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) die("fstatat", name);
    if (mount_id(dirfd, name, AT_SYMLINK_NOFOLLOW) != mount_id(dirfd, "", AT_EMPTY_PATH)) {
        errno = EBUSY;
        die("still a mount", name);
    }
    evidence(dirfd, name, 0);
    note("unlinkat");
    if (unlinkat(dirfd, name, flags) < 0) die("unlinkat", name);
}

/* A mount on ROOT/dev/NAME: unmount through dev. Its mountpoint lies on the dev tmpfs,
 * which is unmounted next and takes it along. */
static void destroy_in_dev(int rootfd, const char *name) {
    int dev = beneath(rootfd, "dev", &HOW_DIR);
    unmount(dev, name);
    close(dev);
}

static void destroy_exact(int rootfd) {
    struct stat st;
    char text[64];
    destroy_in_dev(rootfd, "shm");
    destroy_in_dev(rootfd, "pts");
    for (int i = NDEV - 1; i >= 0; i--) destroy_in_dev(rootfd, DEVICES[i]);
    for (int i = NLINK - 1; i >= 0; i--) {
        int dev = beneath(rootfd, "dev", &HOW_DIR);
        if (fstatat(dev, LINKS[i][0], &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISLNK(st.st_mode)) die("fstatat", LINKS[i][0]);
        if (readlinkat(dev, LINKS[i][0], text, sizeof text) < 0) die("readlinkat", LINKS[i][0]);
        evidence(dev, LINKS[i][0], 0);
        note("unlinkat");
        if (unlinkat(dev, LINKS[i][0], 0) < 0) die("unlinkat", LINKS[i][0]);
        close(dev);
    }
    unmount(rootfd, "dev");
    remove_created(rootfd, "dev", AT_REMOVEDIR);
    int opt = beneath(rootfd, "opt", &HOW_DIR);
    unmount(opt, "tools");
    close(opt);
    opt = beneath(rootfd, "opt", &HOW_DIR); /* removal resolves the parent again */
    remove_created(opt, "tools", AT_REMOVEDIR);
    close(opt);
    remove_created(rootfd, "opt", AT_REMOVEDIR);
    unmount(rootfd, "tmp");
    remove_created(rootfd, "tmp", AT_REMOVEDIR);
    unmount(rootfd, "sys");
    remove_created(rootfd, "sys", AT_REMOVEDIR);
    unmount(rootfd, "proc");
    remove_created(rootfd, "proc", AT_REMOVEDIR);
}

static void place(int rootfd, int mnt, const char *path) {
    if (mnt < 0) die("fsmount/open_tree", path);
    if (syscall(NR_move_mount, mnt, "", rootfd, path, MOVE_MOUNT_F_EMPTY_PATH) < 0) die("move_mount", path);
    close(mnt);
}

static void apply_minimal(int rootfd) {
    mkdirat(rootfd, "proc", 0755);
    place(rootfd, new_fs("proc", OPT_PROC, NSD | MOUNT_ATTR_NOEXEC), "proc");
    mkdirat(rootfd, "sys", 0755);
    place(rootfd, new_fs("sysfs", OPT_SYS, NSD | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_RDONLY), "sys");
    mkdirat(rootfd, "dev", 0755);
    place(rootfd, new_fs("tmpfs", OPT_DEV, NSD | MOUNT_ATTR_NOEXEC), "dev");
    for (int i = 0; i < NDEV; i++) {
        char src[32], path[32];
        snprintf(src, sizeof src, "/dev/%s", DEVICES[i]);
        snprintf(path, sizeof path, "dev/%s", DEVICES[i]);
        int mnt = (int)syscall(NR_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | O_CLOEXEC);
        setattr(mnt, AT_EMPTY_PATH, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, 0);
        close(openat(rootfd, path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666));
        place(rootfd, mnt, path);
    }
    mkdirat(rootfd, "dev/pts", 0755);
    int fs = (int)syscall(NR_fsopen, "devpts", 1);
    if (fs < 0) die("fsopen", "devpts");
    syscall(NR_fsconfig, fs, FSCONFIG_SET_STRING, "source", "devpts", 0);
    syscall(NR_fsconfig, fs, FSCONFIG_SET_FLAG, "newinstance", NULL, 0);
    syscall(NR_fsconfig, fs, FSCONFIG_SET_STRING, "ptmxmode", "0666", 0);
    syscall(NR_fsconfig, fs, FSCONFIG_SET_STRING, "mode", "0620", 0);
    if (syscall(NR_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) die("fsconfig create", "devpts");
    place(rootfd, (int)syscall(NR_fsmount, fs, 1, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC), "dev/pts");
    close(fs);
    mkdirat(rootfd, "dev/shm", 0755);
    place(rootfd, new_fs("tmpfs", OPT_SHM, NSD), "dev/shm");
    for (int i = 0; i < NLINK; i++) {
        char path[32];
        snprintf(path, sizeof path, "dev/%s", LINKS[i][0]);
        if (symlinkat(LINKS[i][1], rootfd, path) < 0) die("symlinkat", path);
    }
    mkdirat(rootfd, "tmp", 0755);
    place(rootfd, new_fs("tmpfs", OPT_TMP, NSD), "tmp");
    mkdirat(rootfd, "opt", 0755);
    mkdirat(rootfd, "opt/tools", 0755);
    int mnt = (int)syscall(NR_open_tree, rootfd, "toolchain", OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE);
    setattr(mnt, AT_EMPTY_PATH | AT_RECURSIVE, MOUNT_ATTR_RDONLY | NSD, 0);
    place(rootfd, mnt, "opt/tools");
}

static void destroy_minimal(const char *root, int rootfd) {
    static const char *const order[] = {"opt/tools", "tmp", "dev/shm", "dev/pts", "dev/tty", "dev/urandom", "dev/random",
                                        "dev/full", "dev/zero", "dev/null", "dev", "sys", "proc"};
    char path[4096];
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        snprintf(path, sizeof path, "%s/%s", root, order[i]);
        if (umount2(path, UMOUNT_NOFOLLOW_) < 0) die("umount2", path);
        if (strncmp(order[i], "dev/", 4) != 0 && unlinkat(rootfd, order[i], AT_REMOVEDIR) < 0) die("rmdir", path);
    }
    if (unlinkat(rootfd, "opt", AT_REMOVEDIR) < 0) die("rmdir", "opt");
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: build_action exact|minimal ROOT ROUNDS | build_action trace ROOT\n");
        return 2;
    }
    const char *mode = argv[1], *root = argv[2];
    int exact = strcmp(mode, "minimal") != 0;
    tracing = strcmp(mode, "trace") == 0;
    long rounds = tracing ? 1 : (argc > 3 ? strtol(argv[3], NULL, 10) : 1);
    int rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) die("open", root);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    for (long r = 0; r < rounds; r++) {
        int64_t t0 = now_ns();
        if (exact) apply_exact(rootfd, root); else apply_minimal(rootfd);
        if (tracing) puts("--destroy");
        int64_t t1 = now_ns();
        if (exact) destroy_exact(rootfd); else destroy_minimal(root, rootfd);
        int64_t t2 = now_ns();
        if (!tracing) printf("%lld %lld\n", (long long)(t1 - t0), (long long)(t2 - t1));
    }
    getrusage(RUSAGE_SELF, &after);
    /* CPU of the loop alone (no exec, no start-up): "cpu USER_US SYS_US" */
    if (!tracing)
        printf("cpu %lld %lld\n",
               (long long)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) * 1000000 +
                   (after.ru_utime.tv_usec - before.ru_utime.tv_usec),
               (long long)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1000000 +
                   (after.ru_stime.tv_usec - before.ru_stime.tv_usec));
    return 0;
}
