# Cross-compile for 32-bit ARM Linux with armeabi-v7a's ISA (ARMv7-A, NEON, hard float) with
# Debian's gcc-arm-linux-gnueabihf. Run the results with: qemu-arm -L /usr/arm-linux-gnueabihf
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(CROSS_PREFIX arm-linux-gnueabihf- CACHE STRING "cross toolchain prefix")
# the ISA flags go with the compiler so that a -DCMAKE_C_FLAGS=... cannot drop them
set(ARMV7_FLAGS -march=armv7-a -mfpu=neon -mfloat-abi=hard)
set(CMAKE_C_COMPILER ${CROSS_PREFIX}gcc ${ARMV7_FLAGS})
set(CMAKE_CXX_COMPILER ${CROSS_PREFIX}g++ ${ARMV7_FLAGS})
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L /usr/arm-linux-gnueabihf)
