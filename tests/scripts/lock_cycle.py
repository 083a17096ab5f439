"""Parent and child take blocking POSIX locks that cross: parent holds byte 0 and wants
byte 1, child holds byte 1 and wants byte 0. Whichever waits second must get EDEADLK; it
then lets go of what it holds, and the other gets its lock. Prints one line per process:
'parent RESULT' and 'child RESULT', RESULT being 'granted' or an errno name."""
import errno
import fcntl
import os
import sys

path = sys.argv[1]


def take(fd, start):
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, start)
        return "granted"
    except OSError as e:
        if e.errno == errno.EDEADLK:
            return "EDEADLK"
        return errno.errorcode.get(e.errno, str(e.errno))


child_ready_r, child_ready_w = os.pipe()
go_r, go_w = os.pipe()
fd = os.open(path, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
pid = os.fork()
if pid == 0:
    cfd = os.open(path, os.O_RDWR)
    fcntl.lockf(cfd, fcntl.LOCK_EX, 1, 1)
    os.write(child_ready_w, b"x")
    os.read(go_r, 1)
    result = take(cfd, 0)
    print("child", result, flush=True)
    # Exiting drops the child's locks either way.
    os._exit(0)
os.read(child_ready_r, 1)
os.write(go_w, b"x")
result = take(fd, 1)
print("parent", result, flush=True)
if result != "granted":
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
_, status = os.waitpid(pid, 0)
sys.exit(0 if status == 0 else 1)
