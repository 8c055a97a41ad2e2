/* Tests of the service's op table (daemon/svc_control.c): every op of
 * XC_OP_MAP (proto/xc_proto.h) has its row, with a handler and the roles that
 * may call it, so adding an op without its row fails here, not in a client. */
#include "xc_svc_internal.h"
#include "xc_test.h"

static void test_every_op_has_a_row(void)
{
    xc_op_t op = xc_svc_op_unhandled();
    XC_CHECK(op == XC_OP_UNKNOWN, "op '%s' has no row (handler and roles) in g_ops", xc_proto_op_name(op));
    XC_CHECK(xc_proto_op_parse("ping", 4) == XC_OP_PING && XC_OP__COUNT > XC_OP_PING, "op map");
}

int main(void)
{
    XC_RUN(test_every_op_has_a_row);
    XC_TEST_EXIT();
}
