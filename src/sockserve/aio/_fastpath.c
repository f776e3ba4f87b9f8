/* The per-message path of an inline-driven async handler, compiled.
 *
 * What: StreamReader.data_received, InlineDriver.resume_parked, StreamReader.readline and
 * read(n), and StreamWriter.drain and write, for the one case that every ping-pong message takes:
 * the handler is parked in a read of its own, nothing is buffered, the chunk is exactly
 * what the read wants, the transport is neither paused nor closing. Every other case
 * calls the Python methods (streams.py, inline.py, writer.py; kept under *_slowly
 * names), which stay the reference: this file repeats their steps in the same order and
 * must change with them. fastpath.py puts these methods in subclasses of those classes
 * (never into the classes themselves) and selects them, once.
 *
 * Why: in Python these were two thirds of the interpreter's work per message (about 170
 * bytecodes, two generator frames, and a bytes.find() whose argument parsing alone costs
 * 550 machine instructions on 3.11): the largest share left between an async handler and
 * a bare uvloop Protocol (docs/async.md, "Speed").
 *
 * How it reads the objects: the classes keep their state in __slots__; install() looks
 * up each slot's member descriptor once and keeps its offset, so a slot is read and
 * written here as Python's own LOAD_ATTR_SLOT would. The functions become method
 * descriptors of those classes (PyDescr_NewMethod), as a C type's methods are: the
 * interpreter calls them without creating a bound method, and uvloop's cached
 * protocol.data_received calls straight into C.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* What a pending read wants (streams.py: _WAKE, _LINE, _SOME). */
#define WANT_LINE 1
#define WANT_SOME 2

/* The slots used here, by class: the reader (streams.py), its LineBuffer
 * (line_buffer.py) and FlowControl (flow.py), the writer (writer.py), the driver
 * (inline.py). */
enum {
    R_WAITER, R_BUFFER, R_WANT, R_WANT_SIZE, R_LINES, R_FLOW, R_DRIVER, R_PARKED_RESULT,
    R_PARKED_ERROR, R_DRIVING, R_TIMEOUT, R_RECV_SIZE, R_COUNT
};
static const char *const reader_slot_names[R_COUNT] = {
    "_waiter", "_buffer", "_want", "_want_size", "_lines", "flow", "_driver",
    "_parked_result", "_parked_error", "_driving", "timeout", "_recv_size",
};
enum { L_MAX_LINE_LENGTH, L_EOF, L_COUNT };
static const char *const lines_slot_names[L_COUNT] = {"max_line_length", "eof"};
enum {
    F_READING_PAUSED, F_WRITING_PAUSED, F_TRANSPORT, F_PENDING_WRITES, F_PENDING_BYTES,
    F_COLLECTING, F_COLLECT_LIMIT, F_HOLDING, F_COUNT
};
static const char *const flow_slot_names[F_COUNT] = {
    "is_reading_paused", "is_writing_paused", "transport", "pending_writes", "pending_bytes",
    "collecting", "collect_limit", "holding",
};
enum { W_FLOW, W_TRANSPORT, W_READY, W_READER, W_COUNT };
static const char *const writer_slot_names[W_COUNT] = {"_flow", "_transport", "_ready", "_reader"};
enum { D_PARKING, D_LOOP, D_TASK, D_CONTEXT, D_HANDLER, D_READER, D_COUNT };
static const char *const driver_slot_names[D_COUNT] = {
    "_parking", "_loop", "_task", "_context", "_handler", "_reader",
};

typedef struct {
    PyTypeObject *reader_type;
    PyTypeObject *driver_type;
    PyTypeObject *writer_type;
    PyTypeObject *lines_type;
    PyTypeObject *flow_type;
    Py_ssize_t reader_slots[R_COUNT];
    Py_ssize_t lines_slots[L_COUNT];
    Py_ssize_t flow_slots[F_COUNT];
    Py_ssize_t driver_slots[D_COUNT];
    Py_ssize_t writer_slots[W_COUNT];
    PyObject *enter_task;         /* asyncio.tasks._enter_task */
    PyObject *leave_task;         /* asyncio.tasks._leave_task */
    PyObject *str_done;           /* "done" */
    PyObject *str_hand_to_task;   /* "_hand_to_task" */
    PyObject *str_resume_parked;  /* "resume_parked" */
    PyObject *str_data_received;  /* "_data_received_slowly" */
    PyObject *str_resume_slowly;  /* "_resume_parked_slowly" */
    PyObject *str_readline_slowly, *str_read_slowly, *str_drain_slowly, *str_give_up;
    PyObject *str_is_closing, *str_throw, *str_close;
    PyObject *str_flush_writes, *str_write_slowly, *str_write, *str_flow, *str_pending_writes;
    PyObject *want_line, *want_some;  /* streams.py's _LINE and _SOME */
    PyObject *outcome_resume, *outcome_handoff, *outcome_returned, *outcome_raised;  /* inline.py's */
} fastpath_state;

/* One set of bindings per process: install() is called once, by fastpath.py. */
static fastpath_state state;
static int installed = 0;

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))
#define READER(obj, name) SLOT(obj, state.reader_slots[name])
#define DRIVER(obj, name) SLOT(obj, state.driver_slots[name])
#define WRITER(obj, name) SLOT(obj, state.writer_slots[name])
#define LINES(obj, name) SLOT(obj, state.lines_slots[name])
#define FLOW(obj, name) SLOT(obj, state.flow_slots[name])

/* The reader's LineBuffer and FlowControl, or NULL when a slot holds something else
 * (a test double): the callers then take the Python path. */
static inline PyObject *
reader_lines(PyObject *reader)
{
    PyObject *lines = READER(reader, R_LINES);
    return lines != NULL && Py_IS_TYPE(lines, state.lines_type) ? lines : NULL;
}

static inline PyObject *
reader_flow(PyObject *reader)
{
    PyObject *flow = READER(reader, R_FLOW);
    return flow != NULL && Py_IS_TYPE(flow, state.flow_type) ? flow : NULL;
}

static inline void
set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    Py_XSETREF(SLOT(obj, offset), Py_NewRef(value));
}

/* A Python int slot as a C integer; -1 with no error set if it is not a plain int. */
static inline Py_ssize_t
int_slot(PyObject *value)
{
    if (value == NULL || !PyLong_CheckExact(value)) {
        return -1;
    }
    Py_ssize_t result = PyLong_AsSsize_t(value);
    if (result == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    return result;
}

/* The exception being raised, taken out of the thread's error state. */
static PyObject *
take_error(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *error = PyErr_GetRaisedException();
#else
    PyObject *type, *error, *traceback;
    PyErr_Fetch(&type, &error, &traceback);
    PyErr_NormalizeException(&type, &error, &traceback);
    if (error != NULL && traceback != NULL) {
        PyException_SetTraceback(error, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
#endif
    return error != NULL ? error : Py_NewRef(Py_None);
}

/* Raise ``error`` again (a reference taken by take_error(), which this consumes), with
 * its own traceback and context, as if it had never been taken. */
static void
restore_error(PyObject *error)
{
    if (!PyExceptionInstance_Check(error)) {
        Py_DECREF(error);
        PyErr_SetString(PyExc_SystemError, "sockserve fast path: an error went missing");
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(error);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(error)), error, PyException_GetTraceback(error));
#endif
}

/* InlineDriver._hand_to_task(outcome, payload), in Python. */
static PyObject *
hand_to_task(PyObject *driver, PyObject *outcome, PyObject *payload)
{
    PyObject *args[3] = {driver, outcome, payload};
    return PyObject_VectorcallMethod(
        state.str_hand_to_task, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The end of a handler's step: ``flow = reader.flow; if flow.pending_writes:
 * flow.flush_writes()`` (inline.py), with FlowControl.flush_writes' usual case, one
 * collected write, done here. 0, or -1 with an exception set. */
static int
flush_writes(PyObject *reader)
{
    PyObject *flow = reader_flow(reader);
    PyObject *pending = flow == NULL ? NULL : FLOW(flow, F_PENDING_WRITES);
    PyObject *transport = flow == NULL ? NULL : FLOW(flow, F_TRANSPORT);
    if (pending == NULL || !PyList_CheckExact(pending) || transport == NULL) {
        /* not ours (a test double): as the Python code does it */
        PyObject *other = PyObject_GetAttr(reader, state.str_flow);
        if (other == NULL) {
            return -1;
        }
        PyObject *writes = PyObject_GetAttr(other, state.str_pending_writes);
        int any = writes == NULL ? -1 : PyObject_IsTrue(writes);
        Py_XDECREF(writes);
        PyObject *done = any <= 0 ? NULL : PyObject_CallMethodNoArgs(other, state.str_flush_writes);
        Py_DECREF(other);
        if (any < 0 || (any > 0 && done == NULL)) {
            return -1;
        }
        Py_XDECREF(done);
        return 0;
    }
    Py_ssize_t count = PyList_GET_SIZE(pending);
    if (count == 0 || FLOW(flow, F_HOLDING) == Py_True) {
        return 0;  /* (holding: sent when the transport's read callback ends) */
    }
    if (count > 1) {
        PyObject *done = PyObject_CallMethodNoArgs(flow, state.str_flush_writes);
        Py_XDECREF(done);
        return done == NULL ? -1 : 0;
    }
    /* flush_writes() for one write: pending_bytes = 0; data = pending.pop(); then
     * transport.write(data) unless the transport is closing */
    Py_INCREF(flow);
    Py_INCREF(transport);
    PyObject *data = Py_NewRef(PyList_GET_ITEM(pending, 0));
    int failed = PyList_SetSlice(pending, 0, 1, NULL) < 0;
    if (!failed) {
        PyObject *zero = PyLong_FromLong(0);
        failed = zero == NULL;
        if (!failed) {
            Py_XSETREF(FLOW(flow, F_PENDING_BYTES), zero);
        }
    }
    if (!failed) {
        PyObject *closing = PyObject_CallMethodNoArgs(transport, state.str_is_closing);
        int is_closing = closing == NULL ? -1 : PyObject_IsTrue(closing);
        Py_XDECREF(closing);
        failed = is_closing < 0;
        if (is_closing == 0) {
            PyObject *args[2] = {transport, data};
            PyObject *written = PyObject_VectorcallMethod(
                state.str_write, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            failed = written == NULL;
            Py_XDECREF(written);
        }
    }
    Py_DECREF(data);
    Py_DECREF(transport);
    Py_DECREF(flow);
    return failed ? -1 : 0;
}

/* InlineDriver.resume_parked: inline.py's steps, in its order. Anything out of the
 * ordinary (not parked yet, a slot unset) goes to the Python method. Every object taken
 * from a slot is held (a new reference) before any call that may run Python code, since
 * that code may rebind the slot. */
static PyObject *
resume_parked(PyObject *driver)
{
    PyObject *slots[D_COUNT];
    for (int i = 0; i < D_COUNT; i++) {
        slots[i] = DRIVER(driver, i);
    }
    PyObject *parking = slots[D_PARKING], *context = slots[D_CONTEXT];
    PyObject *reader = slots[D_READER];
    for (int i = 0; i < D_COUNT; i++) {
        if (slots[i] == NULL) {
            return PyObject_CallMethodNoArgs(driver, state.str_resume_slowly);
        }
    }
    if (parking == Py_None || !PyContext_CheckExact(context)
        || !PyObject_TypeCheck(reader, state.reader_type)) {
        return PyObject_CallMethodNoArgs(driver, state.str_resume_slowly);
    }
    Py_INCREF(driver);
    for (int i = 0; i < D_COUNT; i++) {
        Py_INCREF(slots[i]);
    }
    PyObject *loop = slots[D_LOOP], *task = slots[D_TASK], *handler = slots[D_HANDLER];
    PyObject *pair[2] = {loop, task};
    PyObject *result = NULL;

    PyObject *done = PyObject_CallMethodNoArgs(parking, state.str_done);
    int is_done = done == NULL ? -1 : PyObject_IsTrue(done);
    Py_XDECREF(done);
    if (is_done != 0) {
        /* a cancellation is on its way: the task resumes the handler with it */
        result = is_done < 0 ? NULL : Py_NewRef(Py_None);
        goto release;
    }
    PyObject *entered = PyObject_Vectorcall(state.enter_task, pair, 2, NULL);
    if (entered == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            /* called inside another task's step: let ours resume the handler */
            PyErr_Clear();
            result = hand_to_task(driver, state.outcome_resume, Py_None);
        }
        goto release;
    }
    Py_DECREF(entered);
    set_slot(reader, state.reader_slots[R_DRIVING], Py_True);

    PyObject *yielded = NULL, *error = NULL;
    PySendResult sent;
    if (PyContext_Enter(context) < 0) {  /* as context.run() raising */
        sent = PYGEN_ERROR;
        error = take_error();
    }
    else {
        sent = PyIter_Send(handler, Py_None, &yielded);
        if (sent == PYGEN_ERROR) {
            error = take_error();
        }
        if (PyContext_Exit(context) < 0) {  /* only if not entered: not reached */
            Py_CLEAR(yielded);
            Py_XSETREF(error, take_error());
            sent = PYGEN_ERROR;
        }
    }
    /* The outcome goes to the task first, then the finally clause: driving off, leave. */
    if (sent == PYGEN_NEXT) {
        result = yielded == reader ? Py_NewRef(Py_None)  /* parked again, in its next read */
                                   : hand_to_task(driver, state.outcome_handoff, yielded);
        Py_DECREF(yielded);
    }
    else if (sent == PYGEN_RETURN) {
        result = hand_to_task(driver, state.outcome_returned, yielded);
        Py_DECREF(yielded);
    }
    else {
        result = hand_to_task(driver, state.outcome_raised, error);
        Py_DECREF(error);
    }
    PyObject *pending = result == NULL ? take_error() : NULL;  /* the hand-over's error */
    set_slot(reader, state.reader_slots[R_DRIVING], Py_False);
    if (flush_writes(reader) < 0) {  /* the step's writes, sent together */
        /* as an exception in Python's finally clause, whose own finally leaves the task */
        Py_CLEAR(result);
        PyObject *raised = take_error();
        if (pending != NULL) {
            PyException_SetContext(raised, pending);  /* steals pending */
        }
        pending = raised;
    }
    PyObject *left = PyObject_Vectorcall(state.leave_task, pair, 2, NULL);
    if (left == NULL) {
        /* as an exception in Python's finally clause: it is what the method raises */
        Py_CLEAR(result);
        if (pending != NULL) {
            PyObject *raised = take_error();
            PyException_SetContext(raised, pending);  /* steals pending */
            pending = NULL;
            restore_error(raised);
        }
    }
    else {
        Py_DECREF(left);
        if (pending != NULL) {
            restore_error(pending);
            pending = NULL;
        }
    }
release:
    for (int i = 0; i < D_COUNT; i++) {
        Py_DECREF(slots[i]);
    }
    Py_DECREF(driver);
    return result;
}

/* StreamReader.data_received: the parked-read case here, every other in Python. */
static PyObject *
data_received(PyObject *self, PyObject *data)
{
    PyObject *buffer = READER(self, R_BUFFER);
    PyObject *lines = reader_lines(self);
    if (READER(self, R_WAITER) == self && PyBytes_CheckExact(data) && buffer != NULL
        && PyByteArray_CheckExact(buffer) && PyByteArray_GET_SIZE(buffer) == 0 && lines != NULL) {
        Py_ssize_t size = PyBytes_GET_SIZE(data);
        Py_ssize_t want = int_slot(READER(self, R_WANT));
        /* > 0: the stdlib transport reads recv(recv_size) for a bulk read
         * (receive_switch.py); a read of another kind goes to Python, to switch back. */
        Py_ssize_t recv_size = int_slot(READER(self, R_RECV_SIZE));
        int wanted = 0;
        if (recv_size != 0 && !(want == WANT_SOME
                                && int_slot(READER(self, R_WANT_SIZE)) >= recv_size)) {
            wanted = 0;
        }
        else if (want == WANT_LINE) {
            const char *bytes = PyBytes_AS_STRING(data);
            Py_ssize_t limit = int_slot(LINES(lines, L_MAX_LINE_LENGTH));
            wanted = size > 0 && memchr(bytes, '\n', (size_t)size) == bytes + size - 1
                     && limit >= 0 && size <= limit;
        }
        else if (want == WANT_SOME) {
            Py_ssize_t want_size = int_slot(READER(self, R_WANT_SIZE));
            wanted = want_size >= 0 && size <= want_size;
        }
        if (wanted && READER(self, R_DRIVER) != NULL) {
            /* the handler's own read: resume the handler now */
            set_slot(self, state.reader_slots[R_WAITER], Py_None);
            set_slot(self, state.reader_slots[R_PARKED_RESULT], data);
            /* read only now: dropping the slots' old values may have run Python code */
            PyObject *driver = READER(self, R_DRIVER);
            if (driver == NULL) {
                PyErr_SetString(PyExc_AttributeError, "StreamReader has no driver");
                return NULL;
            }
            Py_INCREF(driver);
            PyObject *result = PyObject_TypeCheck(driver, state.driver_type)
                                   ? resume_parked(driver)
                                   : PyObject_CallMethodNoArgs(driver, state.str_resume_parked);
            Py_DECREF(driver);
            if (result == NULL) {
                return NULL;
            }
            Py_DECREF(result);
            Py_RETURN_NONE;
        }
    }
    PyObject *call[2] = {self, data};
    return PyObject_VectorcallMethod(
        state.str_data_received, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* InlineDriver.resume_parked, for a driver the reader calls through Python. */
static PyObject *
resume_parked_method(PyObject *driver, PyObject *unused)
{
    return resume_parked(driver);
}

/* ---- reads: readline() and read(n) as one small awaitable object ------------------
 *
 * StreamReader.readline/read are coroutines in Python (streams.py). Here they return a
 * Read: an object with send/throw/close and __await__, registered as a
 * collections.abc.Coroutine (so create_task() and ensure_future() take it). Its first
 * step does what the Python coroutine's first lines do for the per-message case (the
 * handler's own read, nothing buffered: park inline, yielding the reader); in every
 * other case it runs the Python coroutine (_readline_slowly / _read_slowly) and passes
 * each step through, as ``await`` would. Parked, it ends as _parked_read does. */

enum { READ_NEW, READ_PARKED, READ_DELEGATING, READ_FINISHED };

typedef struct {
    PyObject_HEAD
    PyObject *reader;
    PyObject *inner;  /* the Python coroutine, while delegating */
    Py_ssize_t size;  /* read(n): n */
    int want;         /* WANT_LINE or WANT_SOME */
    int stage;
    char running;     /* inside send/throw/close: a nested call is refused, as a coroutine's */
    char awaited;     /* __await__ was called: a second await is refused, as a coroutine's
                       * (so is one while a task runs it) */
} ReadObject;

static PyTypeObject *read_type;

static PyObject *
read_new(PyObject *reader, int want, Py_ssize_t size)
{
    ReadObject *read = PyObject_GC_New(ReadObject, read_type);
    if (read == NULL) {
        return NULL;
    }
    read->reader = Py_NewRef(reader);
    read->inner = NULL;
    read->size = size;
    read->want = want;
    read->stage = READ_NEW;
    read->running = 0;
    read->awaited = 0;
    PyObject_GC_Track(read);
    return (PyObject *)read;
}

static int
read_traverse(ReadObject *read, visitproc visit, void *arg)
{
    Py_VISIT(read->reader);
    Py_VISIT(read->inner);
    return 0;
}

static int
read_clear(ReadObject *read)
{
    read->stage = READ_FINISHED;
    Py_CLEAR(read->reader);
    Py_CLEAR(read->inner);
    return 0;
}

/* A StopIteration raised inside the read becomes a RuntimeError, as PEP 479 does for a
 * coroutine's body: otherwise the awaiting coroutine would take it for the read's
 * result. Call with an error set. */
static void
forbid_stop_iteration(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)
        && !PyErr_ExceptionMatches(PyExc_StopAsyncIteration)) {
        return;
    }
    PyObject *stop = take_error();
    PyErr_SetString(PyExc_RuntimeError, "coroutine raised StopIteration");
    PyObject *raised = take_error();
    PyException_SetCause(raised, Py_NewRef(stop));
    PyException_SetContext(raised, stop);  /* steals stop */
    restore_error(raised);
}

/* Can this read park inline now? (streams.py: readline's/read's first branch) */
static int
read_can_park(PyObject *reader)
{
    PyObject *buffer = READER(reader, R_BUFFER);
    PyObject *lines = reader_lines(reader), *flow = reader_flow(reader);
    return buffer != NULL && PyByteArray_CheckExact(buffer) && PyByteArray_GET_SIZE(buffer) == 0
           && lines != NULL && flow != NULL && LINES(lines, L_EOF) == Py_False
           && READER(reader, R_DRIVING) == Py_True && READER(reader, R_WAITER) == Py_None
           && READER(reader, R_TIMEOUT) == Py_None && FLOW(flow, F_READING_PAUSED) == Py_False;
}

static PySendResult
read_delegate(ReadObject *read, PyObject *arg, PyObject **result)
{
    if (read->inner == NULL) {
        if (read->want == WANT_LINE) {
            read->inner = PyObject_CallMethodNoArgs(read->reader, state.str_readline_slowly);
        }
        else {
            PyObject *size = PyLong_FromSsize_t(read->size);
            if (size != NULL) {
                read->inner = PyObject_CallMethodOneArg(read->reader, state.str_read_slowly, size);
                Py_DECREF(size);
            }
        }
        if (read->inner == NULL) {
            read->stage = READ_FINISHED;
            return PYGEN_ERROR;
        }
        read->stage = READ_DELEGATING;
    }
    PyObject *inner = Py_NewRef(read->inner);  /* held while it runs */
    PySendResult sent = PyIter_Send(inner, arg, result);
    if (sent != PYGEN_NEXT) {
        read->stage = READ_FINISHED;
        Py_CLEAR(read->inner);
    }
    Py_DECREF(inner);
    return sent;
}

static PySendResult
read_step(ReadObject *read, PyObject *arg, PyObject **result)
{
    PyObject *reader = read->reader;
    switch (read->stage) {
    case READ_NEW:
        if (arg != Py_None) {
            read->stage = READ_FINISHED;
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        if (read->want == WANT_SOME && read->size <= 0) {
            return read_delegate(read, arg, result);
        }
        if (read_can_park(reader)) {
            set_slot(reader, state.reader_slots[R_WAITER], reader);
            set_slot(reader, state.reader_slots[R_WANT],
                     read->want == WANT_LINE ? state.want_line : state.want_some);
            if (read->want == WANT_SOME) {
                PyObject *size = PyLong_FromSsize_t(read->size);
                if (size == NULL) {
                    set_slot(reader, state.reader_slots[R_WAITER], Py_None);
                    read->stage = READ_FINISHED;
                    return PYGEN_ERROR;
                }
                Py_XSETREF(SLOT(reader, state.reader_slots[R_WANT_SIZE]), size);
            }
            read->stage = READ_PARKED;
            *result = Py_NewRef(reader);
            return PYGEN_NEXT;
        }
        return read_delegate(read, arg, result);
    case READ_PARKED: {
        /* resumed: the callback left the result (or the error) on the reader */
        read->stage = READ_FINISHED;
        PyObject *error = READER(reader, R_PARKED_ERROR);
        if (error != NULL && error != Py_None) {
            Py_INCREF(error);
            set_slot(reader, state.reader_slots[R_PARKED_ERROR], Py_None);
            restore_error(error);
            return PYGEN_ERROR;
        }
        PyObject *value = READER(reader, R_PARKED_RESULT);
        *result = Py_NewRef(value != NULL ? value : Py_None);
        set_slot(reader, state.reader_slots[R_PARKED_RESULT], Py_None);
        return PYGEN_RETURN;
    }
    case READ_DELEGATING:
        return read_delegate(read, arg, result);
    default:
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
}

/* am_send: one step, refusing a nested one, with PEP 479's rule applied. */
static PySendResult
read_send(ReadObject *read, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (read->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    int delegating = read->stage == READ_DELEGATING || read->stage == READ_NEW;
    read->running = 1;
    Py_INCREF(read);
    PySendResult sent = read_step(read, arg, result);
    read->running = 0;
    if (sent == PYGEN_ERROR) {
        *result = NULL;
        if (!delegating) {  /* the inner coroutine applies the rule itself */
            forbid_stop_iteration();
        }
    }
    Py_DECREF(read);
    return sent;
}

/* End the read where an exception lands in it (thrown at, closed, dropped): a parked
 * read gives its read up (_give_up_parked_read puts back a line it was handed), and
 * any read is finished after. */
static int
read_finish(ReadObject *read)
{
    int was_parked = read->stage == READ_PARKED;
    read->stage = READ_FINISHED;
    if (!was_parked) {
        return 0;
    }
    read->running = 1;
    PyObject *done = PyObject_CallMethodNoArgs(read->reader, state.str_give_up);
    read->running = 0;
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static PyObject *
stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
read_method_send(ReadObject *read, PyObject *arg)
{
    PyObject *result = NULL;
    PySendResult sent = read_send(read, arg, &result);
    if (sent == PYGEN_NEXT) {
        return result;
    }
    if (sent == PYGEN_RETURN) {
        stop_iteration(result);
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
read_iternext(ReadObject *read)
{
    return read_method_send(read, Py_None);
}

/* The exception throw() was asked to raise, as generator.throw() builds it; NULL with
 * the error set if the arguments are not a valid exception. */
static PyObject *
thrown_exception(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *kind = args[0];
    PyObject *value = nargs > 1 ? args[1] : Py_None;
    PyObject *traceback = nargs > 2 ? args[2] : Py_None;
    if (traceback != Py_None && !PyTraceBack_Check(traceback)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    PyObject *error;
    if (PyExceptionInstance_Check(kind)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        error = Py_NewRef(kind);
    }
    else if (PyExceptionClass_Check(kind)) {
        if (PyObject_TypeCheck(value, (PyTypeObject *)kind)) {
            error = Py_NewRef(value);
        }
        else if (value == Py_None) {
            error = PyObject_CallNoArgs(kind);
        }
        else if (PyTuple_Check(value)) {
            error = PyObject_Call(kind, value, NULL);
        }
        else {
            error = PyObject_CallOneArg(kind, value);
        }
        if (error == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, "
                     "not %s", Py_TYPE(kind)->tp_name);
        return NULL;
    }
    if (traceback != Py_None && PyException_SetTraceback(error, traceback) < 0) {
        Py_DECREF(error);
        return NULL;
    }
    return error;
}

static PyObject *
read_method_throw(ReadObject *read, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    if (read->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (read->stage == READ_DELEGATING) {
        PyObject *inner = Py_NewRef(read->inner);  /* held while it runs */
        read->running = 1;
        PyObject *throw = PyObject_GetAttr(inner, state.str_throw);
        PyObject *result = throw == NULL
                               ? NULL
                               : PyObject_Vectorcall(throw, args, (size_t)nargs, NULL);
        Py_XDECREF(throw);
        read->running = 0;
        if (result == NULL && read->stage == READ_DELEGATING) {
            read->stage = READ_FINISHED;
            Py_CLEAR(read->inner);
        }
        Py_DECREF(inner);
        return result;
    }
    PyObject *error = thrown_exception(args, nargs);
    if (error == NULL) {
        return NULL;
    }
    if (read_finish(read) < 0) {
        Py_DECREF(error);
        return NULL;
    }
    restore_error(error);
    forbid_stop_iteration();
    return NULL;
}

static PyObject *
read_method_close(ReadObject *read, PyObject *unused)
{
    if (read->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (read->stage == READ_DELEGATING) {
        PyObject *inner = read->inner;
        read->inner = NULL;
        read->stage = READ_FINISHED;
        read->running = 1;
        PyObject *result = PyObject_CallMethodNoArgs(inner, state.str_close);
        read->running = 0;
        Py_DECREF(inner);
        return result;
    }
    if (read_finish(read) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Dropped while parked (never resumed, never closed): give the read up, as a suspended
 * _parked_read generator does when it is collected. */
static void
read_finalize(ReadObject *read)
{
    if (read->stage != READ_PARKED || read->reader == NULL) {
        return;
    }
    PyObject *error = PyErr_Occurred() ? take_error() : NULL;
    if (read_finish(read) < 0) {
        PyErr_WriteUnraisable((PyObject *)read);
    }
    if (error != NULL) {
        restore_error(error);
    }
}

static void
read_dealloc(ReadObject *read)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)read) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(read);
    read_clear(read);
    PyObject_GC_Del(read);
}

static PyObject *
read_await(ReadObject *read)
{
    if (read->awaited || read->stage == READ_PARKED || read->stage == READ_DELEGATING) {
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        return NULL;
    }
    read->awaited = 1;
    return Py_NewRef(read);
}

static PyObject *
read_method_await(ReadObject *read, PyObject *unused)
{
    return read_await(read);
}

static PyMethodDef read_methods[] = {
    {"send", (PyCFunction)read_method_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))read_method_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)read_method_close, METH_NOARGS, NULL},
    {"__await__", (PyCFunction)read_method_await, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods read_as_async = {
    .am_await = (unaryfunc)read_await,
    .am_send = (sendfunc)read_send,
};

static PyTypeObject read_type_spec = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sockserve.aio._fastpath.Read",
    .tp_doc = "A pending readline()/read() of a sockserve StreamReader (a coroutine).",
    .tp_basicsize = sizeof(ReadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
#if PY_VERSION_HEX < 0x030C0000
                | Py_TPFLAGS_HAVE_FINALIZE
#endif
    ,
    .tp_dealloc = (destructor)read_dealloc,
    .tp_traverse = (traverseproc)read_traverse,
    .tp_clear = (inquiry)read_clear,
    .tp_finalize = (destructor)read_finalize,
    .tp_as_async = &read_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)read_iternext,
    .tp_methods = read_methods,
};

/* StreamReader.readline() */
static PyObject *
reader_readline(PyObject *self, PyObject *unused)
{
    return read_new(self, WANT_LINE, -1);
}

/* StreamReader.read(n=-1); any other way of calling it goes to the Python coroutine. */
static PyObject *
reader_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames == NULL && nargs <= 1 && (nargs == 0 || PyLong_CheckExact(args[0]))) {
        Py_ssize_t size = nargs == 0 ? -1 : PyLong_AsSsize_t(args[0]);
        if (!(size == -1 && PyErr_Occurred())) {
            return read_new(self, WANT_SOME, size);
        }
        PyErr_Clear();
    }
    PyObject *method = PyObject_GetAttr(self, state.str_read_slowly);
    if (method == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(method, args, (size_t)nargs, kwnames);
    Py_DECREF(method);
    return result;
}

/* StreamWriter.drain(): writer.py's test, then its ready future or _drain_slowly(). */
static PyObject *
writer_drain(PyObject *self, PyObject *unused)
{
    PyObject *flow = WRITER(self, W_FLOW);
    PyObject *transport = WRITER(self, W_TRANSPORT);
    if (flow == NULL || transport == NULL) {
        PyErr_SetString(PyExc_AttributeError, "StreamWriter has no flow control or transport");
        return NULL;
    }
    int is_paused;
    if (Py_IS_TYPE(flow, state.flow_type)) {
        PyObject *paused = FLOW(flow, F_WRITING_PAUSED);
        is_paused = paused == Py_False ? 0 : paused == NULL ? -1 : PyObject_IsTrue(paused);
    }
    else {  /* not ours (a test double): ask as the Python method does */
        PyObject *paused = PyObject_GetAttrString(flow, "is_writing_paused");
        is_paused = paused == NULL ? -1 : PyObject_IsTrue(paused);
        Py_XDECREF(paused);
    }
    if (is_paused < 0) {
        return NULL;
    }
    if (!is_paused) {
        Py_INCREF(transport);  /* is_closing() may be Python code that rebinds the slot */
        PyObject *closing = PyObject_CallMethodNoArgs(transport, state.str_is_closing);
        Py_DECREF(transport);
        int is_closing = closing == NULL ? -1 : PyObject_IsTrue(closing);
        Py_XDECREF(closing);
        if (is_closing < 0) {
            return NULL;
        }
        if (!is_closing) {
            PyObject *ready = WRITER(self, W_READY);  /* read after that call, not before */
            if (ready == NULL) {
                PyErr_SetString(PyExc_AttributeError, "StreamWriter has no ready future");
                return NULL;
            }
            return Py_NewRef(ready);
        }
    }
    return PyObject_CallMethodNoArgs(self, state.str_drain_slowly);
}

/* StreamWriter.write(data): writer.py's collecting case (a bytes object written while
 * the handler's driver runs it), the rest in Python (_write_slowly). */
static PyObject *
writer_write(PyObject *self, PyObject *data)
{
    PyObject *flow = WRITER(self, W_FLOW);
    PyObject *reader = WRITER(self, W_READER);
    if (PyBytes_CheckExact(data) && flow != NULL && Py_IS_TYPE(flow, state.flow_type)
        && FLOW(flow, F_COLLECTING) == Py_True && reader != NULL
        && PyObject_TypeCheck(reader, state.reader_type)
        && READER(reader, R_DRIVING) == Py_True) {
        PyObject *pending = FLOW(flow, F_PENDING_WRITES);
        Py_ssize_t collected = int_slot(FLOW(flow, F_PENDING_BYTES));
        Py_ssize_t limit = int_slot(FLOW(flow, F_COLLECT_LIMIT));
        if (pending != NULL && PyList_CheckExact(pending) && collected >= 0 && limit >= 0) {
            Py_ssize_t size = PyBytes_GET_SIZE(data);
            if (size == 0) {
                Py_RETURN_NONE;
            }
            if (PyList_Append(pending, data) < 0) {
                return NULL;
            }
            collected += size;
            PyObject *total = PyLong_FromSsize_t(collected);
            if (total == NULL) {
                return NULL;
            }
            Py_XSETREF(FLOW(flow, F_PENDING_BYTES), total);
            if (collected >= limit) {
                return PyObject_CallMethodNoArgs(flow, state.str_flush_writes);
            }
            Py_RETURN_NONE;
        }
    }
    PyObject *call[2] = {self, data};
    return PyObject_VectorcallMethod(
        state.str_write_slowly, call, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The offsets of ``names`` in ``cls``'s slots; -1 on error. */
static int
find_slots(PyTypeObject *cls, const char *const *names, Py_ssize_t *offsets, int count)
{
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyObject_GetAttrString((PyObject *)cls, names[i]);
        if (descr == NULL) {
            return -1;
        }
        int is_slot = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                      && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (is_slot) {
            offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!is_slot) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", cls->tp_name, names[i]);
            return -1;
        }
    }
    return 0;
}

/* The methods, in the order install() returns them; the class each belongs to is
 * method_classes[i] (0: the reader, 1: the driver, 2: the writer). */
static PyMethodDef method_defs[] = {
    {"data_received", (PyCFunction)data_received, METH_O,
     "StreamReader.data_received, the per-message case compiled."},
    {"resume_parked", (PyCFunction)resume_parked_method, METH_NOARGS,
     "InlineDriver.resume_parked, compiled."},
    {"readline", (PyCFunction)reader_readline, METH_NOARGS,
     "StreamReader.readline(), compiled."},
    {"read", (PyCFunction)(void (*)(void))reader_read, METH_FASTCALL | METH_KEYWORDS,
     "StreamReader.read(n=-1), compiled."},
    {"drain", (PyCFunction)writer_drain, METH_NOARGS, "StreamWriter.drain(), compiled."},
    {"write", (PyCFunction)writer_write, METH_O, "StreamWriter.write(data), compiled."},
};
static const int method_classes[] = {0, 1, 0, 0, 2, 2};
#define METHOD_COUNT ((Py_ssize_t)(sizeof(method_defs) / sizeof(method_defs[0])))

static PyObject *
intern(const char *name, int *failed)
{
    PyObject *string = PyUnicode_InternFromString(name);
    if (string == NULL) {
        *failed = 1;
    }
    return string;
}

/* install(reader_class, driver_class, writer_class, line_buffer_class, flow_class,
 *         enter_task, leave_task, handoff, returned, raised, want_line, want_some, resume)
 * -> method descriptors, in method_defs' order, for the classes to take. Once per process. */
static PyObject *
install(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13 || !PyType_Check(args[0]) || !PyType_Check(args[1])
        || !PyType_Check(args[2]) || !PyType_Check(args[3]) || !PyType_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "install(reader_class, driver_class, writer_class, line_buffer_class, "
                        "flow_class, enter_task, leave_task, handoff, returned, raised, "
                        "want_line, want_some, resume)");
        return NULL;
    }
    if (installed) {
        PyErr_SetString(PyExc_RuntimeError, "the fast path is installed already");
        return NULL;
    }
    if (!PyLong_CheckExact(args[10]) || PyLong_AsLong(args[10]) != WANT_LINE
        || !PyLong_CheckExact(args[11]) || PyLong_AsLong(args[11]) != WANT_SOME) {
        PyErr_SetString(PyExc_ValueError, "streams.py's _LINE/_SOME are not this file's");
        return NULL;
    }
    fastpath_state s = {0};
    s.reader_type = (PyTypeObject *)args[0];
    s.driver_type = (PyTypeObject *)args[1];
    s.writer_type = (PyTypeObject *)args[2];
    s.lines_type = (PyTypeObject *)args[3];
    s.flow_type = (PyTypeObject *)args[4];
    if (find_slots(s.reader_type, reader_slot_names, s.reader_slots, R_COUNT) < 0
        || find_slots(s.driver_type, driver_slot_names, s.driver_slots, D_COUNT) < 0
        || find_slots(s.writer_type, writer_slot_names, s.writer_slots, W_COUNT) < 0
        || find_slots(s.lines_type, lines_slot_names, s.lines_slots, L_COUNT) < 0
        || find_slots(s.flow_type, flow_slot_names, s.flow_slots, F_COUNT) < 0) {
        return NULL;
    }
    int failed = 0;
    s.str_done = intern("done", &failed);
    s.str_hand_to_task = intern("_hand_to_task", &failed);
    s.str_resume_parked = intern("resume_parked", &failed);
    s.str_data_received = intern("_data_received_slowly", &failed);
    s.str_resume_slowly = intern("_resume_parked_slowly", &failed);
    s.str_readline_slowly = intern("_readline_slowly", &failed);
    s.str_read_slowly = intern("_read_slowly", &failed);
    s.str_drain_slowly = intern("_drain_slowly", &failed);
    s.str_give_up = intern("_give_up_parked_read", &failed);
    s.str_is_closing = intern("is_closing", &failed);
    s.str_throw = intern("throw", &failed);
    s.str_close = intern("close", &failed);
    s.str_flush_writes = intern("flush_writes", &failed);
    s.str_write_slowly = intern("_write_slowly", &failed);
    s.str_write = intern("write", &failed);
    s.str_flow = intern("flow", &failed);
    s.str_pending_writes = intern("pending_writes", &failed);
    PyObject *result = failed ? NULL : PyTuple_New(METHOD_COUNT);
    PyTypeObject *classes[3] = {s.reader_type, s.driver_type, s.writer_type};
    for (Py_ssize_t i = 0; result != NULL && i < METHOD_COUNT; i++) {
        /* method descriptors, as a C type's methods are: the interpreter calls them
         * without binding, and they check that self is an instance of their class */
        PyObject *method = PyDescr_NewMethod(classes[method_classes[i]], &method_defs[i]);
        if (method == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, i, method);
    }
    if (result == NULL) {
        /* the interned names are immortal enough to leave; nothing else was taken */
        return NULL;
    }
    Py_INCREF(s.reader_type);
    Py_INCREF(s.driver_type);
    Py_INCREF(s.writer_type);
    Py_INCREF(s.lines_type);
    Py_INCREF(s.flow_type);
    s.enter_task = Py_NewRef(args[5]);
    s.leave_task = Py_NewRef(args[6]);
    s.outcome_handoff = Py_NewRef(args[7]);
    s.outcome_returned = Py_NewRef(args[8]);
    s.outcome_raised = Py_NewRef(args[9]);
    s.want_line = Py_NewRef(args[10]);
    s.want_some = Py_NewRef(args[11]);
    s.outcome_resume = Py_NewRef(args[12]);
    state = s;
    installed = 1;
    return result;
}

static PyMethodDef module_methods[] = {
    {"install", (PyCFunction)(void (*)(void))install, METH_FASTCALL,
     "Bind the compiled fast path to StreamReader and InlineDriver (once per process)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sockserve.aio._fastpath",
    .m_doc = "The per-message path of inline-driven async handlers, compiled (fastpath.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&read_type_spec) < 0) {
        return NULL;
    }
    read_type = &read_type_spec;
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddObjectRef(module, "Read", (PyObject *)read_type) < 0) {
        Py_CLEAR(module);
    }
    return module;
}
