/* STUB */
#include "core/problem.h"
void problem_respond(struct request *req, enum problem p, const char *detail) {}
