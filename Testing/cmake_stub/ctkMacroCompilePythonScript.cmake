# Test double of CTK's CMake/ctkMacroCompilePythonScript.cmake (commontk/CTK).
#
# Same arguments, same sanity checks, same source -> destination mapping (the
# "src|tgt_file|dest_dir" entries), same Copy<target>Python{Script,Resource}Files targets
# and the same install(DIRECTORY) of the destination folder. Not reproduced: byte
# compiling (Compile<target>PythonFiles) and the global-target mode, which Slicer only
# uses inside its own build tree.

macro(ctkMacroCompilePythonScript)
  # CTK parses with ctkMacroParseArguments, which leaves a keyword given no value
  # undefined, as cmake_parse_arguments does.
  cmake_parse_arguments(MY
    "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES"
    ${ARGN}
    )

  foreach(varname TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${varname})
      message(FATAL_ERROR "${varname} is mandatory")
    endif()
  endforeach()
  if(MY_GLOBAL_TARGET)
    message(FATAL_ERROR "ctkMacroCompilePythonScript stub: GLOBAL_TARGET is not modelled")
  endif()

  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(target ${MY_TARGET_NAME})

  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  get_filename_component(MY_DESTINATION_DIR ${MY_DESTINATION_DIR} REALPATH)

  foreach(file ${MY_SCRIPTS})
    # As CTK: append ".py" unless the extension already matches "py".
    get_filename_component(file_ext ${file} EXT)
    if(NOT "${file_ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    if(NOT IS_ABSOLUTE ${file})
      set(src "${MY_SOURCE_DIR}/${file}")
    else()
      set(src "${file}")
    endif()
    set(tgt_file ${file})
    if(IS_ABSOLUTE ${file})
      set(src ${file})
      file(RELATIVE_PATH tgt_file ${CMAKE_CURRENT_BINARY_DIR} ${file})
    endif()
    set_property(GLOBAL APPEND PROPERTY
      _CTK_${target}_PYTHON_SCRIPTS "${src}|${tgt_file}|${MY_DESTINATION_DIR}")
  endforeach()

  if(DEFINED MY_RESOURCES)
    foreach(file ${MY_RESOURCES})
      if(NOT IS_ABSOLUTE ${file})
        set(src "${MY_SOURCE_DIR}/${file}")
      else()
        set(src "${file}")
      endif()
      set_property(GLOBAL APPEND PROPERTY
        _CTK_${target}_PYTHON_RESOURCES "${src}|${file}|${MY_DESTINATION_DIR}")
    endforeach()
  endif()

  set(MY_DIRECTORY_TO_INSTALL ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(MY_DIRECTORY_TO_INSTALL ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${MY_DIRECTORY_TO_INSTALL}"
    DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries
    USE_SOURCE_PERMISSIONS)

  ctkFunctionAddCompilePythonScriptTargets(${target})
endmacro()

function(_ctk_add_copy_python_files_target target type)
  set(target_name Copy${target}Python${type}Files)
  # As CTK: targets are made once, so a second call with the same TARGET_NAME copies
  # nothing more.
  if(NOT TARGET ${target_name})
    string(TOUPPER ${type} type_upper)
    get_property(entries GLOBAL PROPERTY _CTK_${target}_PYTHON_${type_upper}S)
    set(copied_files)
    foreach(entry IN LISTS entries)
      string(REPLACE "|" ";" tuple "${entry}")
      list(GET tuple 0 src)
      list(GET tuple 1 tgt_file)
      list(GET tuple 2 dest_dir)
      set(tgt ${dest_dir}/${tgt_file})
      add_custom_command(DEPENDS ${src}
                         COMMAND ${CMAKE_COMMAND} -E copy ${src} ${tgt}
                         OUTPUT ${tgt}
                         COMMENT "Copying python ${type}: ${tgt_file}")
      list(APPEND copied_files ${tgt})
    endforeach()
    if(entries)
      add_custom_target(${target_name} ALL DEPENDS ${copied_files} ${ARGN})
    endif()
  endif()
endfunction()

function(ctkFunctionAddCompilePythonScriptTargets target)
  cmake_parse_arguments(MY "KEEP_ONLY_PYC" "" "" ${ARGN})
  _ctk_add_copy_python_files_target(${target} Script ${MY_UNPARSED_ARGUMENTS})
  _ctk_add_copy_python_files_target(${target} Resource ${MY_UNPARSED_ARGUMENTS})
endfunction()
