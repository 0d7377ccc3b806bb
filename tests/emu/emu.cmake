# The CUDA backend built against the CPU emulation (tests/emu/README.md),
# included by the top-level CMakeLists.txt with -DUNET_CUDA_EMU=ON: the
# sources of src/kernels/cuda as they are, the .cu files turned into C++ by
# cu2cc.py and compiled by the host's C++ compiler, the .c files compiled as
# C, all against the emulator's headers instead of the toolkit's, and
# defining what the real CUDA build defines (UNET_HAVE_CUDA, UNET_HAVE_NCCL)
# so that the host code takes the same paths.
enable_language(CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_FLAGS_RELEASE "-O2 -DNDEBUG")
find_package(Python3 REQUIRED COMPONENTS Interpreter)

set(UNET_EMU_DIR ${CMAKE_CURRENT_SOURCE_DIR}/tests/emu)
add_library(unet_cuda_emulator STATIC ${UNET_EMU_DIR}/runtime.cc ${UNET_EMU_DIR}/cudnn.cc ${UNET_EMU_DIR}/libs.cc)
target_include_directories(unet_cuda_emulator PUBLIC ${UNET_EMU_DIR}/include)
target_compile_options(unet_cuda_emulator PRIVATE -Wall -Wextra -Werror)
set_target_properties(unet_cuda_emulator PROPERTIES POSITION_INDEPENDENT_CODE ON)

file(GLOB UNET_CUDA_CU CONFIGURE_DEPENDS src/kernels/cuda/*.cu)
file(GLOB UNET_CUDA_C CONFIGURE_DEPENDS src/kernels/cuda/*.c)
set(UNET_CUDA_GENERATED)
foreach(cu ${UNET_CUDA_CU})
  get_filename_component(name ${cu} NAME)
  set(cc ${CMAKE_CURRENT_BINARY_DIR}/emu/${name}.cc)
  add_custom_command(OUTPUT ${cc}
                     COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/emu
                     COMMAND ${Python3_EXECUTABLE} ${UNET_EMU_DIR}/cu2cc.py ${cu} ${cc}
                     DEPENDS ${cu} ${UNET_EMU_DIR}/cu2cc.py
                     COMMENT "Emulating ${name}" VERBATIM)
  list(APPEND UNET_CUDA_GENERATED ${cc})
endforeach()

add_library(unetcuda STATIC ${UNET_CUDA_GENERATED} ${UNET_CUDA_C})
target_include_directories(unetcuda PUBLIC include PRIVATE src)
# Warnings show but do not stop the build: g++ sees host and device code as one, and warns where nvcc would not.
# No contraction into FMA anywhere (nvcc contracts in device code unless -fmad=false): see README.
target_compile_options(unetcuda PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unknown-pragmas> -ffp-contract=off)
set_target_properties(unetcuda PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_link_libraries(unetcuda PUBLIC unet_cuda_emulator)
target_compile_definitions(unetcuda PUBLIC UNET_HAVE_NCCL=1)
target_compile_definitions(unetlib PUBLIC UNET_HAVE_CUDA=1 UNET_CUDA_EMULATED=1)
target_link_libraries(unetlib PUBLIC unetcuda)
message(STATUS "CUDA backend: emulated on the CPU (tests/emu), a correctness tool; nothing it measures is a GPU's")

# The emulator's own check (tests/emu/test_emulator.py): a .cu of kernels that keep and break CUDA's rules.
add_custom_command(OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/emu/selftest.cu.cc
                   COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/emu
                   COMMAND ${Python3_EXECUTABLE} ${UNET_EMU_DIR}/cu2cc.py ${UNET_EMU_DIR}/selftest.cu
                           ${CMAKE_CURRENT_BINARY_DIR}/emu/selftest.cu.cc
                   DEPENDS ${UNET_EMU_DIR}/selftest.cu ${UNET_EMU_DIR}/cu2cc.py VERBATIM)
add_executable(unet_emu_selftest ${CMAKE_CURRENT_BINARY_DIR}/emu/selftest.cu.cc)
target_compile_options(unet_emu_selftest PRIVATE -Wall -Wextra -Werror)
target_link_libraries(unet_emu_selftest PRIVATE unet_cuda_emulator)
