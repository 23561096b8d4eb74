// The precompiled header shared by every test executable.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>
