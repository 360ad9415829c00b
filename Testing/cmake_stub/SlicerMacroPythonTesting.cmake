# Test double of Slicer's CMake/SlicerMacroPythonTesting.cmake.
#
# Same arguments and the same test name (py_<TESTNAME_PREFIX><script name>); instead of
# a ctest that runs the Slicer launcher, the test is recorded in
# ${CMAKE_BINARY_DIR}/slicer_stub/python_tests.txt. Stricter than the real macro: the
# module slicer.testing.runUnitTest would import must exist in one of the two folders
# the real test puts on sys.path (the current binary dir and the script's folder).

macro(slicer_add_python_unittest)
  set(options)
  set(oneValueArgs TESTNAME_PREFIX SCRIPT)
  set(multiValueArgs SLICER_ARGS)
  cmake_parse_arguments(MY "${options}" "${oneValueArgs}" "${multiValueArgs}" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    # The real macro ignores them silently; an unknown keyword here is a typo.
    message(FATAL_ERROR "slicer_add_python_unittest stub: unknown arguments \"${MY_UNPARSED_ARGUMENTS}\"")
  endif()
  get_filename_component(test_name ${MY_SCRIPT} NAME_WE)
  get_filename_component(_script_source_dir ${MY_SCRIPT} PATH)
  if("${_script_source_dir}" STREQUAL "")
    set(_script_source_dir ${CMAKE_CURRENT_SOURCE_DIR})
  elseif(NOT IS_ABSOLUTE "${_script_source_dir}")
    set(_script_source_dir ${CMAKE_CURRENT_SOURCE_DIR}/${_script_source_dir})
  endif()
  set(_test_module "")
  foreach(_dir "${CMAKE_CURRENT_BINARY_DIR}" "${_script_source_dir}")
    if(NOT _test_module AND EXISTS "${_dir}/${test_name}.py")
      set(_test_module "${_dir}/${test_name}.py")
    endif()
  endforeach()
  if(NOT _test_module)
    message(FATAL_ERROR "slicer_add_python_unittest(SCRIPT ${MY_SCRIPT}): no ${test_name}.py in"
      " ${CMAKE_CURRENT_BINARY_DIR} or ${_script_source_dir}")
  endif()
  file(APPEND "${CMAKE_BINARY_DIR}/slicer_stub/python_tests.txt"
    "py_${MY_TESTNAME_PREFIX}${test_name}\t${_test_module}\n")
endmacro()
