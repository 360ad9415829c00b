# Test double of Slicer's CMake/SlicerMacroBuildScriptedModule.cmake.
#
# Same arguments, sanity checks and ctkMacroCompilePythonScript call as the real macro.
# One difference: every nonexistent SCRIPTS/RESOURCES entry is reported (SEND_ERROR)
# before configuring fails, where the real macro stops at the first one.

macro(slicerMacroBuildScriptedModule)
  set(options
    WITH_GENERIC_TESTS
    WITH_SUBDIR
    VERBOSE
    )
  set(oneValueArgs
    NAME
    )
  set(multiValueArgs
    SCRIPTS
    RESOURCES
    )
  cmake_parse_arguments(MY_SLICER
    "${options}"
    "${oneValueArgs}"
    "${multiValueArgs}"
    ${ARGN}
    )

  message(STATUS "Configuring Scripted module: ${MY_SLICER_NAME}")

  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME)
    message(FATAL_ERROR "NAME is mandatory")
  endif()

  set(_slicer_stub_missing FALSE)
  foreach(var SCRIPTS RESOURCES)
    foreach(value ${MY_SLICER_${var}})
      if(NOT IS_ABSOLUTE ${value})
        set(value_absolute ${CMAKE_CURRENT_SOURCE_DIR}/${value})
      else()
        set(value_absolute ${value})
      endif()
      # As the real macro: "X" may name "X.py", and generated files are accepted.
      if(NOT EXISTS ${value_absolute} AND NOT EXISTS ${value_absolute}.py)
        if(NOT IS_ABSOLUTE ${value})
          set(value_absolute ${CMAKE_CURRENT_BINARY_DIR}/${value})
        endif()
        get_source_file_property(is_generated ${value_absolute} GENERATED)
        if(NOT is_generated)
          message(SEND_ERROR
            "slicerMacroBuildScriptedModule(${var}) given nonexistent"
            " file or directory '${value}'")
          set(_slicer_stub_missing TRUE)
        endif()
      endif()
    endforeach()
  endforeach()
  if(_slicer_stub_missing)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): nonexistent files listed (above)")
  endif()

  if(NOT Slicer_USE_PYTHONQT)
    message(FATAL_ERROR
      "Attempting to build the Python scripted module '${MY_SLICER_NAME}'"
      " when Slicer_USE_PYTHONQT is OFF")
  endif()

  set(_no_install_subdir_option NO_INSTALL_SUBDIR)
  set(_destination_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_destination_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_destination_subdir "/${_destination_subdir}")
    set(_no_install_subdir_option "")
  endif()

  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_destination_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_no_install_subdir_option}
    )

  if(BUILD_TESTING AND MY_SLICER_WITH_GENERIC_TESTS)
    # The real SlicerMacroConfigureGenericPythonModuleTests configures Slicer's
    # qSlicerModuleGenericTest.py.in into the binary dir; a placeholder stands in.
    set(_generic_test ${CMAKE_CURRENT_BINARY_DIR}/qSlicer${MY_SLICER_NAME}ModuleGenericTest.py)
    file(WRITE ${_generic_test} "# stands in for Slicer's generic module test\n")
    slicer_add_python_unittest(
      SCRIPT qSlicer${MY_SLICER_NAME}ModuleGenericTest.py
      SLICER_ARGS --no-main-window --disable-cli-modules
                  --additional-module-path ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
      TESTNAME_PREFIX nomainwindow_
      )
  endif()
endmacro()
